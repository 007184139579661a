"""Writes the example's offline image data: 28x28 grey digits drawn with PIL's built-in
font at random offsets and sizes, with noise (MNIST-like, no download).

    python make_data.py [OUT_DIR] [PER_DIGIT] [SEED]

Images land in OUT_DIR/<digit>/<n>.png; the committed data/ and digit7.png came from
`python make_data.py data 40 0` and `python make_data.py --one 7 digit7.png`.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def draw_digit(digit: int, rng: random.Random) -> Image.Image:
    image = Image.new("L", (28, 28), 0)
    font = ImageFont.load_default(size=rng.randint(18, 22))
    ImageDraw.Draw(image).text((rng.randint(5, 10), rng.randint(-1, 4)), str(digit),
                               fill=rng.randint(200, 255), font=font)
    noise = Image.effect_noise((28, 28), rng.randint(10, 30))
    return Image.blend(image, noise, 0.15)


def write_set(out: Path, per_digit: int, seed: int) -> None:
    rng = random.Random(seed)
    for digit in range(10):
        (out / str(digit)).mkdir(parents=True, exist_ok=True)
        for n in range(per_digit):
            draw_digit(digit, rng).save(out / str(digit) / f"{n}.png")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        draw_digit(int(sys.argv[2]), random.Random(99)).save(sys.argv[3])
    else:
        args = sys.argv[1:] + ["data", "40", "0"][len(sys.argv) - 1:]
        write_set(Path(args[0]), int(args[1]), int(args[2]))
