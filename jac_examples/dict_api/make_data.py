"""Writes train.json for the dict-API example in the pandas-style column layout of the
later ph API: "text", "label" (class index) and "input_ids" (a 1x768 embedding per row).

The embeddings come from ph's offline hashing encoder, i.e. the vectors the head's own
pre-processor computes for the same text, so predicting from text or from vectors agrees.
Run from this folder: python make_data.py (needs ../../tests/helpers/intent_data.py).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from helpers.intent_data import TEMPLATES, make_split  # noqa: E402

from ph.modeling.processors import HashingEncoder  # noqa: E402

INTENTS = list(TEMPLATES)
train, _ = make_split(seed=3, per_intent=20)
vectors = HashingEncoder(768).encode([r["text"] for r in train])
columns = {"text": {}, "label": {}, "input_ids": {}}
for row, (record, vector) in enumerate(zip(train, vectors)):
    columns["text"][str(row)] = record["text"]
    columns["label"][str(row)] = INTENTS.index(record["label"])
    columns["input_ids"][str(row)] = [[round(v, 5) for v in vector.tolist()]]
Path("train.json").write_text(json.dumps(columns))
print(f"wrote {len(train)} rows; labels: {INTENTS}")
