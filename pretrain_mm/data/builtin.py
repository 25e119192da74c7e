"""Built-in datasets made on first use: synthetic captioned `shapes`, scikit-learn `digits`, real `stamps` (Debian)."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

from .digits import DIGITS_DEFAULTS, digits_info, digits_samples, digits_split
from .shapes import SHAPES_DEFAULTS, shapes_info, shapes_samples
from .shards import write_samples
from .stamps import STAMPS_DEFAULTS, write_stamps
from .tokenizer import DEFAULT_CONTEXT_LENGTH, TOKENIZER_FILE, Tokenizer, read_tokenizer, train_tokenizer

VERSION = 5  # 3: shapes' compositional split, prompts unseen in training; 4: prompts name one attribute;
# 5: digits drawn at a random size and place
INFO_FILE = "classes.json"
SPLITS = ("train", "val")

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
    digits = digits_split(params["seed"], params["val_fraction"]) if name == "digits" else {}
    for split in SPLITS:
        if name == "shapes":
            num = params["num_train"] if split == "train" else params["num_val"]
            samples = shapes_samples(split, num, params["image_size"], params["seed"])
        else:
            num = len(digits[split])
            samples = digits_samples(digits, split, params)

        def keep(stream, split=split):
            for key, members in stream:
                if split == "train":
                    captions.append(members["txt"])
                yield key, members

        write_samples(keep(samples), os.path.join(out_dir, split), shard_size, total=num, desc=f"{name}/{split}")
    return (shapes_info(params) if name == "shapes" else digits_info(params)), captions


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
