"""User code for the dict-API example, passed to ph as source text
(`ph.create_head_list(config, python)`): a post-processor that names the intent."""
import torch

INTENTS = ["order_food", "get_weather", "book_flight", "play_music", "set_alarm",
           "book_restaurant"]


class IntentPostProcessor:
    """Log-probabilities -> {"intent", "confidence"} per input."""

    def process(self, x):
        probs = torch.exp(x)
        best = probs.argmax(dim=1)
        return [{"intent": INTENTS[i] if i < len(INTENTS) else str(i),
                 "confidence": round(float(probs[row, i]), 3)}
                for row, i in enumerate(best.tolist())]
