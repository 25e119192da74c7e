"""Built-in datasets made on first use: synthetic captioned `shapes`, scikit-learn `digits`, real `stamps` (Debian)."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .shards import write_samples
from .stamps import STAMPS_DEFAULTS, write_stamps
from .tokenizer import DEFAULT_CONTEXT_LENGTH, TOKENIZER_FILE, Tokenizer, read_tokenizer, train_tokenizer

VERSION = 4  # 3: shapes' compositional split, prompts unseen in training; 4: prompts name one attribute
INFO_FILE = "classes.json"
SPLITS = ("train", "val")

# ----------------------------------------------------------------------------- shapes

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


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, subsampling=0)
    return buf.getvalue()


def _shapes_samples(split: str, num: int, image_size: int, seed: int) -> Iterator[tuple[str, dict]]:
    for i in range(num):
        rng = random.Random(f"shapes/{seed}/{split}/{i}")
        img, attrs = draw_scene(rng, image_size, SPLIT_PAIRS[split])
        caption = shapes_caption(rng.choice(FULL_TEMPLATES if rng.random() < 0.5 else PARTIAL_TEMPLATES), attrs)
        meta = dict(attrs, caption=caption, full_caption=shapes_caption(FULL_TEMPLATES[0], attrs), label=attrs["shape"])
        yield (
            f"{i:08d}",
            {"jpg": _jpeg(img), "txt": caption, "cls": str(attrs["shape"]), "json": json.dumps(meta, sort_keys=True)},
        )


_FIELDS = {"shape": "shape", "colour": "colour", "size": "size", "position": "pos", "background": "bg"}


def _prompts(attr: str) -> list[str]:
    """Zero-shot prompt ensemble for one attribute: the PROMPT_TEMPLATES (never a training
    caption's) that name this attribute and no other, with '{}' where the class name goes. A
    prompt naming another attribute would name it wrongly for most images, and on the
    compositional split a wrong colour in a shape prompt pulls towards the shapes that colour
    came with in training: the prompts ask about one attribute, as 'a photo of a {c}.' does."""
    field = "{" + _FIELDS[attr] + "}"
    templates = [t for t in PROMPT_TEMPLATES if field in t and not re.sub(re.escape(field), "", t).count("{")]
    assert len(templates) >= 3, f"too few zero-shot prompt templates for {attr}"
    return [t.replace(field, "{}") for t in templates]


def fixed_text(template: str) -> list[str]:
    """The literal pieces of a caption or prompt template between its {fields}, stripped."""
    return [piece.strip() for piece in re.split(r"\{[^{}]*\}", template) if piece.strip()]


def check_unseen_prompts(prompts, training) -> None:
    """Assert that no zero-shot prompt template is a training caption template (fields renamed
    or not) and that none of its literal pieces of two or more words occurs in one. Single words
    ('a', 'the', 'background') are allowed: no English sentence avoids them all."""

    def form(t):
        return re.sub(r"\{[^{}]*\}", "{}", t)

    seen = {form(t) for t in training}
    pieces = [f" {p} " for t in training for p in fixed_text(t)]
    for prompt in prompts:
        assert form(prompt) not in seen, f"zero-shot prompt template {prompt!r} is a training caption template"
        for piece in fixed_text(prompt):
            assert len(piece.split()) < 2 or not any(f" {piece} " in p for p in pieces), (
                f"zero-shot prompt template {prompt!r}: {piece!r} occurs in a training caption template"
            )


SHAPES_EVAL_NOTE = (
    f"val holds only the {len(HELD_OUT)} shape-colour pairs never seen in training (every shape "
    "and every colour is seen, never together); zero-shot prompts are templates never used in "
    "training captions"
)


def _shapes_info(params: dict) -> dict:
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
        "prompts": {a: _prompts(a) for a in _FIELDS},
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


# ----------------------------------------------------------------------------- digits

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Training captions use DIGIT_TEMPLATES; zero-shot prompts DIGIT_PROMPT_TEMPLATES, which no caption
# uses (checked at build time), so zero-shot accuracy is not the recall of seen captions.
DIGIT_TEMPLATES = (
    "a handwritten digit {}",
    "a scan of a handwritten {}",
    "the number {}, written by hand",
    "a small scan of the handwritten number {}",
)
DIGIT_PROMPT_TEMPLATES = (
    "a photo of the digit {}",
    "a picture of the numeral {}",
    "a pixelated drawing of {}",
    "the figure {} in dark ink",
    "a blurry picture showing {}",
)
DIGITS_EVAL_NOTE = (
    "val: a stratified random split of the scans; zero-shot prompts are templates never used in training captions"
)
DIGITS_DEFAULTS = {"image_size": 32, "val_fraction": 0.2, "seed": 0}


def _digits_split(seed: int, val_fraction: float) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    idx = np.arange(len(data.target))
    train, val = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=data.target)
    return {"train": np.sort(train), "val": np.sort(val), "images": data.images, "target": data.target}


def _digits_samples(d: dict, split: str, image_size: int, seed: int) -> Iterator[tuple[str, dict]]:
    for i in d[split]:
        ink = np.clip(d["images"][i] / 16.0 * 255.0, 0, 255).astype(np.uint8)
        img = Image.fromarray(255 - ink, "L").resize((image_size, image_size), Image.Resampling.BICUBIC)
        label = int(d["target"][i])
        caption = random.Random(f"digits/{seed}/{i}").choice(DIGIT_TEMPLATES).format(DIGIT_NAMES[label])
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        yield (
            f"{int(i):08d}",
            {
                "png": buf.getvalue(),
                "txt": caption,
                "cls": str(label),
                "json": json.dumps({"caption": caption, "label": label, "index": int(i)}, sort_keys=True),
            },
        )


def _digits_info(params: dict) -> dict:
    check_unseen_prompts(DIGIT_PROMPT_TEMPLATES, DIGIT_TEMPLATES)
    return {
        "name": "digits",
        "params": params,
        "label": "label",
        "classes": {"label": list(DIGIT_NAMES)},
        "label_keys": {"label": "cls"},
        "prompts": {"label": list(DIGIT_PROMPT_TEMPLATES)},
        "eval_note": DIGITS_EVAL_NOTE,
    }


# ----------------------------------------------------------------------------- building and caching

BUILTINS: dict[str, dict[str, Any]] = {"shapes": SHAPES_DEFAULTS, "digits": DIGITS_DEFAULTS, "stamps": STAMPS_DEFAULTS}


def _params(name: str, overrides: dict) -> dict:
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTINS)}")
    unknown = set(overrides) - set(BUILTINS[name])
    if unknown:
        raise ValueError(f"built-in {name!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(BUILTINS[name])}")
    return {**BUILTINS[name], **overrides}


def _write_synthetic(name: str, params: dict, out_dir: str, shard_size: int) -> tuple[dict, list[str]]:
    """shapes or digits: out_dir/{train,val}/*.tar; returns (classes.json's info, the train captions)."""
    captions: list[str] = []
    digits = _digits_split(params["seed"], params["val_fraction"]) if name == "digits" else {}
    for split in SPLITS:
        if name == "shapes":
            num = params["num_train"] if split == "train" else params["num_val"]
            samples = _shapes_samples(split, num, params["image_size"], params["seed"])
        else:
            num = len(digits[split])
            samples = _digits_samples(digits, split, params["image_size"], params["seed"])

        def keep(stream, split=split):
            for key, members in stream:
                if split == "train":
                    captions.append(members["txt"])
                yield key, members

        write_samples(keep(samples), os.path.join(out_dir, split), shard_size, total=num, desc=f"{name}/{split}")
    return (_shapes_info(params) if name == "shapes" else _digits_info(params)), captions


def write_builtin(name: str, out_dir: str, shard_size: int = 500, vocab_size: int = 1024, **overrides) -> dict:
    """Write a built-in dataset: out_dir/{train,val}/*.tar + sizes.json, tokenizer.json (BPE trained
    on the train captions) and classes.json (class names, label keys, zero-shot prompts)."""
    params = _params(name, overrides)
    if name == "stamps":  # real images read from a Debian package: its own reader and split (stamps.py)
        info, captions = write_stamps(out_dir, params, shard_size)
    else:
        info, captions = _write_synthetic(name, params, out_dir, shard_size)
    train_tokenizer(captions, vocab_size=vocab_size).save(os.path.join(out_dir, TOKENIZER_FILE))
    with open(os.path.join(out_dir, INFO_FILE), "w") as f:
        f.write(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def data_root(root: str | None = None) -> str:
    return os.path.expanduser(root or os.environ.get("PRETRAIN_MM_DATA") or os.path.join("~", ".cache", "pretrain_mm"))


def builtin_dir(name: str, root: str | None = None, **overrides) -> str:
    """The cache directory of a built-in dataset, building it first if needed. Building happens in a
    temporary directory renamed into place under a file lock, so concurrent callers (ranks) wait
    for one build and an interrupted build never leaves a partial dataset."""
    params = _params(name, overrides)
    tag = f"{name}-v{VERSION}"
    if overrides and params != BUILTINS[name]:
        tag += "-" + hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    root = data_root(root)
    final = os.path.join(root, tag)
    if os.path.isfile(os.path.join(final, INFO_FILE)):
        return final
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{tag}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(os.path.join(final, INFO_FILE)):
            return final
        for stale in glob.glob(os.path.join(root, f".{tag}.tmp-*")):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=f".{tag}.tmp-", dir=root)
        try:
            write_builtin(name, tmp, **overrides)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache must be readable
            if os.path.isdir(final):  # incomplete leftovers without classes.json
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def get_builtin(name: str, split: str = "train", root: str | None = None, **overrides) -> list[str]:
    """Shard paths of a built-in dataset split ('train' or 'val'), created on first use and cached
    under $PRETRAIN_MM_DATA or ~/.cache/pretrain_mm."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} of built-in {name!r}; choose one of {', '.join(SPLITS)}")
    directory = os.path.join(builtin_dir(name, root, **overrides), split)
    return sorted(glob.glob(os.path.join(glob.escape(directory), "*.tar")))


def builtin_info(name: str, root: str | None = None, **overrides) -> dict:
    """classes.json of a built-in dataset: class names per attribute, label keys, zero-shot prompts."""
    with open(os.path.join(builtin_dir(name, root, **overrides), INFO_FILE)) as f:
        return json.load(f)


def load_tokenizer(
    name_or_path: str, context_length: int = DEFAULT_CONTEXT_LENGTH, root: str | None = None
) -> Tokenizer:
    """A tokenizer by name ('clip': OpenAI CLIP's BPE; 'shapes', 'digits', ...: the built-in dataset's own,
    made on first use under `root`, as get_builtin), or from a tokenizer.json file or a directory holding one
    (a shard directory or its parent)."""
    if name_or_path in BUILTINS:  # a bare name; write ./shapes for a directory of that name
        name_or_path = builtin_dir(name_or_path, root=root)
    return read_tokenizer(name_or_path, context_length, builtin_names=list(BUILTINS))
