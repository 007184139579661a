"""jsctl's output: every JSON object in it, in order (it prints them one after another,
with other text between)."""
from __future__ import annotations

import json


def parse_json_stream(text: str) -> list[dict]:
    decoder, results, i = json.JSONDecoder(), [], 0
    while (start := text.find("{", i)) != -1:
        obj, i = decoder.raw_decode(text, start)
        results.append(obj)
    return results
