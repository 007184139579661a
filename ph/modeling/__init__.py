"""torch, one head at a time and many at once: the built-in models, pre/post-processors,
text encoders, the inference engine, and the stacked pass over many heads' weights."""
