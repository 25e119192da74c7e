"""The built-in `shapes` set: captioned synthetic scenes of one shape (kind, colour, size, position, background)
and its compositional split, in which val shows only shape-colour pairs that training never does."""

from __future__ import annotations

import io
import json
import math
import random
import re
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

from .prompts import check_unseen_prompts

COLOURS = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 215, 35),
    "purple": (135, 55, 185),
    "orange": (245, 135, 25),
    "pink": (245, 125, 185),
    "cyan": (35, 205, 215),
}
BACKGROUNDS = {"white": (232, 232, 232), "grey": (125, 125, 125), "black": (22, 22, 22), "brown": (105, 70, 40)}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SHAPE_SIZES = ("small", "large")
POSITIONS = (
    "top left",
    "top centre",
    "top right",
    "middle left",
    "centre",
    "middle right",
    "bottom left",
    "bottom centre",
    "bottom right",
)
# Half the captions describe everything, half only some attributes besides the shape: then no
# attribute but the shape tells every caption apart, and a model cannot match captions while
# ignoring shapes (with full captions only, colour + background + position suffice).
FULL_TEMPLATES = (
    "a {size} {colour} {shape} at the {pos} of a {bg} background",
    "a {size} {colour} {shape} on {bg}, at the {pos}",
    "{bg} background with a {size} {colour} {shape} at the {pos}",
    "there is a {size} {shape} in {colour} at the {pos} of the picture",
)
PARTIAL_TEMPLATES = (
    "a {colour} {shape}",
    "a {size} {shape}",
    "a {size} {colour} {shape}",
    "a {shape} at the {pos}",
    "a {shape} on a {bg} background",
    "a picture of a {colour} {shape} on a {bg} background",
)
# Zero-shot prompts: templates no training caption uses (check_unseen_prompts asserts it at build
# time), so zero-shot accuracy measures transfer to new wording, not recall of seen captions.
PROMPT_TEMPLATES = (
    "a drawing of a {shape}",
    "the outline of a {shape}",
    "one {shape} and nothing else",
    "an image showing a single {shape}",
    "an object painted {colour}",
    "something coloured {colour}",
    "a {colour} thing",
    "mostly {colour} paint",
    "an object that looks {size}",
    "the figure is {size}",
    "a {size} object",
    "a figure toward the {pos}",
    "something placed toward the {pos}",
    "an object near the {pos}",
    "a plain {bg} backdrop behind the object",
    "a figure resting on a {bg} backdrop",
    "an empty {bg} backdrop",
)
# The compositional split: (shape, colour) index pairs that no training scene shows and that are
# the only pairs val shows, so val asks for known shapes and known colours in unseen combinations.
# Shape s loses colours s and s - 2 (mod 8): every shape 2 of its 8 colours, every colour 1 or 2
# shapes, 12 of the 48 pairs; a fixed rule, so every build holds out the same pairs.
HELD_OUT = tuple((s, c) for s in range(len(SHAPES)) for c in (s, (s - 2) % len(COLOURS)))
SPLIT_PAIRS = {
    "train": tuple((s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS)) if (s, c) not in HELD_OUT),
    "val": HELD_OUT,
}
assert all(sum(s == k for s, _ in HELD_OUT) == 2 for k in range(len(SHAPES)))
assert all(1 <= sum(c == k for _, c in HELD_OUT) <= 2 for k in range(len(COLOURS)))
SHAPES_DEFAULTS = {"num_train": 10_000, "num_val": 1_000, "image_size": 64, "seed": 0}


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(n: int, radii: tuple[float, ...], start: float = -90.0):
        k = len(radii)
        return [
            (
                cx + radii[i % k] * r * math.cos(math.radians(start + 360.0 * i / n)),
                cy + radii[i % k] * r * math.sin(math.radians(start + 360.0 * i / n)),
            )
            for i in range(n)
        ]

    if shape == "triangle":
        return ring(3, (1.0,))
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.72 * r, cy), (cx, cy + r), (cx - 0.72 * r, cy)]
    if shape == "star":
        return ring(10, (1.0, 0.45))
    if shape == "square":
        h = 0.82 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "cross":
        a, w = r, 0.32 * r
        pts = [
            (w, -a),
            (w, -w),
            (a, -w),
            (a, w),
            (w, w),
            (w, a),
            (-w, a),
            (-w, w),
            (-a, w),
            (-a, -w),
            (-w, -w),
            (-w, -a),
        ]
        return [(cx + x, cy + y) for x, y in pts]
    raise ValueError(shape)


def draw_scene(
    rng: random.Random, size: int, pairs: tuple[tuple[int, int], ...] | None = None
) -> tuple[Image.Image, dict]:
    """One scene: a shape of random kind, colour, size and grid position on a jittered, shaded,
    noisy background. Returns the image and the attribute indices. `pairs`: the (shape, colour)
    index pairs to draw from (a split's, SPLIT_PAIRS), uniformly; None: any shape, any colour."""
    if pairs is None:
        shape_colour = (rng.randrange(len(SHAPES)), rng.randrange(len(COLOURS)))
    else:
        shape_colour = rng.choice(pairs)
    attrs = {
        "shape": shape_colour[0],
        "colour": shape_colour[1],
        "size": rng.randrange(len(SHAPE_SIZES)),
        "position": rng.randrange(len(POSITIONS)),
        "background": rng.randrange(len(BACKGROUNDS)),
    }
    ss = 4  # supersampling for smooth edges
    row, col = divmod(attrs["position"], 3)
    cx = (0.2 + 0.3 * col + rng.uniform(-0.04, 0.04)) * size * ss
    cy = (0.2 + 0.3 * row + rng.uniform(-0.04, 0.04)) * size * ss
    r = size * ss * (rng.uniform(0.1, 0.13) if attrs["size"] == 0 else rng.uniform(0.17, 0.21))
    mask = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(mask)
    shape = SHAPES[attrs["shape"]]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=255)
    alpha = np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255.0

    g = np.random.default_rng(rng.getrandbits(63))
    base = np.array(list(BACKGROUNDS.values())[attrs["background"]], np.float32) + rng.uniform(-12, 12)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    shade = (math.cos(theta) * ramp[None, :] + math.sin(theta) * ramp[:, None]) * rng.uniform(0, 18)
    bg = base + shade[..., None] + g.normal(0, 4, (size, size, 3)).astype(np.float32)
    fg = np.array(list(COLOURS.values())[attrs["colour"]], np.float32) + np.array(
        [rng.uniform(-18, 18) for _ in range(3)], np.float32
    )
    img = np.clip(bg * (1 - alpha) + fg * alpha, 0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB"), attrs


def shapes_caption(template: str, attrs: dict) -> str:
    return template.format(
        size=SHAPE_SIZES[attrs["size"]],
        colour=list(COLOURS)[attrs["colour"]],
        shape=SHAPES[attrs["shape"]],
        pos=POSITIONS[attrs["position"]],
        bg=list(BACKGROUNDS)[attrs["background"]],
    )


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, subsampling=0)
    return buf.getvalue()


def shapes_samples(split: str, num: int, image_size: int, seed: int) -> Iterator[tuple[str, dict]]:
    for i in range(num):
        rng = random.Random(f"shapes/{seed}/{split}/{i}")
        img, attrs = draw_scene(rng, image_size, SPLIT_PAIRS[split])
        caption = shapes_caption(rng.choice(FULL_TEMPLATES if rng.random() < 0.5 else PARTIAL_TEMPLATES), attrs)
        meta = dict(attrs, caption=caption, full_caption=shapes_caption(FULL_TEMPLATES[0], attrs), label=attrs["shape"])
        yield (
            f"{i:08d}",
            {
                "jpg": jpeg_bytes(img),
                "txt": caption,
                "cls": str(attrs["shape"]),
                "json": json.dumps(meta, sort_keys=True),
            },
        )


_FIELDS = {"shape": "shape", "colour": "colour", "size": "size", "position": "pos", "background": "bg"}


def attribute_prompts(attr: str) -> list[str]:
    """Zero-shot prompt ensemble for one attribute: the PROMPT_TEMPLATES (never a training
    caption's) that name this attribute and no other, with '{}' where the class name goes. A
    prompt naming another attribute would name it wrongly for most images, and on the
    compositional split a wrong colour in a shape prompt pulls towards the shapes that colour
    came with in training: the prompts ask about one attribute, as 'a photo of a {c}.' does."""
    field = "{" + _FIELDS[attr] + "}"
    templates = [t for t in PROMPT_TEMPLATES if field in t and not re.sub(re.escape(field), "", t).count("{")]
    assert len(templates) >= 3, f"too few zero-shot prompt templates for {attr}"
    return [t.replace(field, "{}") for t in templates]


SHAPES_EVAL_NOTE = (
    f"val holds only the {len(HELD_OUT)} shape-colour pairs never seen in training (every shape "
    "and every colour is seen, never together); zero-shot prompts are templates never used in "
    "training captions"
)


def shapes_info(params: dict) -> dict:
    check_unseen_prompts(PROMPT_TEMPLATES, FULL_TEMPLATES + PARTIAL_TEMPLATES)
    return {
        "name": "shapes",
        "params": params,
        "label": "shape",
        "classes": {
            "shape": list(SHAPES),
            "colour": list(COLOURS),
            "size": list(SHAPE_SIZES),
            "position": list(POSITIONS),
            "background": list(BACKGROUNDS),
        },
        "label_keys": {a: f"json:{a}" for a in _FIELDS},
        # prompt ensembles for zero-shot classification of each attribute: p.format(class name)
        "prompts": {a: attribute_prompts(a) for a in _FIELDS},
        "notes": "captions name left/right positions: a horizontal flip makes them wrong (hflip=False); "
        "json:full_caption describes every attribute, for retrieval without ambiguous captions",
        "split": {
            "kind": "compositional",
            "held_out": [[SHAPES[s], list(COLOURS)[c]] for s, c in HELD_OUT],
            "note": "train never shows a held-out (shape, colour) pair; val shows only those",
        },
        # said beside the evaluation's results (eval/report.py)
        "eval_note": SHAPES_EVAL_NOTE,
    }
