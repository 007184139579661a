"""Intent utterances from templates: a small, real-looking intent set made offline.

`make_split(seed)` gives train and held-out utterances; the held-out ones are built
from slot values and templates that never appear in training.
"""
from __future__ import annotations

import itertools
import random

SLOTS = {
    "food": ["pizza", "burger", "sushi", "pad thai", "burrito", "salad", "ramen", "kebab",
             "pepperoni pizza", "veggie burger", "fried rice", "tacos"],
    "city": ["Paris", "Tokyo", "New York", "Berlin", "Lagos", "Sydney", "Lima", "Toronto",
             "Madrid", "Seoul", "Nairobi", "Boston"],
    "day": ["today", "tomorrow", "on Friday", "this weekend", "next Monday", "tonight",
            "on Sunday", "next week"],
    "artist": ["Adele", "the Beatles", "Miles Davis", "Beyonce", "Coldplay", "Bach",
               "Taylor Swift", "Bob Marley", "Nirvana", "Mozart"],
    "time": ["7 am", "6:30", "noon", "8 in the morning", "5 pm", "midnight", "9:15", "10 am"],
    "count": ["two", "four", "six", "three", "five", "eight"],
}

TEMPLATES = {
    "order_food": ["I want to order a {food}", "can I get a {food} delivered",
                   "order me a {food} please", "I'd like a {food} for dinner",
                   "get me some {food} from the nearest place", "I am hungry, order {food}",
                   "please deliver a {food} to my home", "I'll have a large {food}"],
    "get_weather": ["what is the weather in {city} {day}", "will it rain in {city} {day}",
                    "how hot will it be in {city}", "weather forecast for {city} {day}",
                    "is it going to snow in {city} {day}", "do I need an umbrella in {city} {day}",
                    "how cold is it in {city} right now", "tell me the forecast {day}"],
    "book_flight": ["book a flight to {city} {day}", "I need a plane ticket to {city}",
                    "find me flights to {city} {day}", "fly me to {city} {day}",
                    "get a one way ticket to {city}", "are there cheap flights to {city} {day}",
                    "reserve a seat on a flight to {city}", "I want to fly to {city}"],
    "play_music": ["play some {artist}", "put on music by {artist}", "I want to hear {artist}",
                   "start playing {artist} songs", "play the latest album of {artist}",
                   "can you play {artist} for me", "shuffle songs by {artist}",
                   "turn on some {artist} music"],
    "set_alarm": ["set an alarm for {time}", "wake me up at {time} {day}",
                  "set my alarm to {time}", "I need an alarm at {time}",
                  "remind me to get up at {time}", "create an alarm for {time} {day}",
                  "alarm at {time} please", "make sure I wake up at {time}"],
    "book_restaurant": ["book a table for {count} in {city}", "reserve a table for {count} {day}",
                        "I need a dinner reservation for {count} people",
                        "find a restaurant in {city} for {count} {day}",
                        "get us a table for {count} at an italian place",
                        "make a reservation for {count} {day}",
                        "can you book a restaurant for {count} people in {city}",
                        "table for {count} {day} please"],
}


def _fill(template: str, rng: random.Random, values: dict) -> str:
    names = [n for n in SLOTS if "{" + n + "}" in template]
    return template.format(**{n: rng.choice(values[n]) for n in names})


def make_split(seed: int = 0, per_intent: int = 40, held_out_per_intent: int = 15):
    """(train, held_out) as lists of {"text", "label"}; held-out uses unseen templates
    and slot values."""
    rng = random.Random(seed)
    train_values = {k: v[: len(v) * 2 // 3] for k, v in SLOTS.items()}
    test_values = {k: v[len(v) * 2 // 3:] for k, v in SLOTS.items()}
    train, held_out = [], []
    for intent, templates in TEMPLATES.items():
        seen, unseen = templates[:6], templates[6:]
        texts = set()
        for template in itertools.islice(itertools.cycle(seen), per_intent * 3):
            texts.add(_fill(template, rng, train_values))
            if len(texts) >= per_intent:
                break
        train += [{"text": t, "label": intent} for t in sorted(texts)]
        tests = set()
        for template in itertools.islice(itertools.cycle(unseen + seen), held_out_per_intent * 4):
            text = _fill(template, rng, test_values)
            if text not in texts:
                tests.add(text)
            if len(tests) >= held_out_per_intent:
                break
        held_out += [{"text": t, "label": intent} for t in sorted(tests)]
    return train, held_out


def as_label_lists(records) -> dict:
    """{label: [utterances]} form of records."""
    out: dict = {}
    for r in records:
        out.setdefault(r["label"], []).append(r["text"])
    return out
