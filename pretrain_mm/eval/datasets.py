"""Eval sets: the built-in shapes / digits, a labelled WebDataset of yours, CLIP_benchmark webdataset directories."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pretrain_mm.config import EvalConfig
from pretrain_mm.data import builtin_info, expand_urls, get_builtin, iter_shard

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ["a photo of a {c}."]
# Retrieval captions of the built-in sets: shapes' own captions are often partial ("a red circle"
# fits dozens of images), full_caption names every attribute and so has one right answer.
BUILTIN_CAPTION_KEYS = {"shapes": "json:full_caption", "digits": "txt"}


@dataclass
class ZeroShotTask:
    label: str  # which Features.labels entry holds the truth
    classnames: list[str]
    templates: list[str]


@dataclass
class EvalSet:
    """One evaluation dataset and what can be done with it: zero-shot tasks (CLIP), retrieval
    (CLIP, when `retrieval`: of the caption_key's captions), captioning (CoCa, when `captioning`:
    scored against the caption_key's captions and attribute_names' JSON fields), classification by
    probe / k-NN / fine-tune (when train_urls and label_key are set: train split -> test split)."""

    name: str
    test_urls: list[str]
    train_urls: list[str] | None = None
    label_key: str | None = None  # loader spec of the class label -> Features.labels["label"]
    classnames: list[str] | None = None  # of that label
    caption_key: str | None = None
    split_captions: bool = False  # one caption per line (CLIP_benchmark retrieval sets)
    retrieval: bool = False
    captioning: bool = False
    attribute_names: dict[str, list[str]] = field(default_factory=dict)  # JSON index field -> value names
    zeroshot: dict[str, ZeroShotTask] = field(default_factory=dict)
    json_labels: list[str] = field(default_factory=list)  # JSON fields read by sample key as extra labels
    note: str | None = None  # what its split and prompts test (eval_note), for the report

    @property
    def classification(self) -> bool:
        return bool(self.train_urls) and self.label_key is not None


def builtin_set(name: str, eval_cfg: EvalConfig, root: str | None = None) -> EvalSet:
    """A built-in set with the tasks the eval config asks of it (eval.zeroshot / retrieval / classification /
    captioning)."""
    info = builtin_info(name, root)
    primary = info["label"]
    out = EvalSet(
        name=name,
        test_urls=get_builtin(name, "val", root),
        label_key=info["label_keys"][primary],
        classnames=info["classes"][primary],
        note=info.get("eval_note"),
    )
    if name in eval_cfg.classification:
        out.train_urls = get_builtin(name, "train", root)
    if name in eval_cfg.retrieval or name in eval_cfg.captioning:
        out.caption_key = BUILTIN_CAPTION_KEYS.get(name, "txt")
        out.retrieval = name in eval_cfg.retrieval
    # The attributes zero-shot classifies and captions are checked on: eval.shapes_attributes for shapes.
    attributes = list(eval_cfg.shapes_attributes) if name == "shapes" else [primary]
    unknown = [attr for attr in attributes if attr not in info["classes"]]
    if unknown and (name in eval_cfg.zeroshot or name in eval_cfg.captioning):
        raise ValueError(
            f"eval.shapes_attributes: {name!r} has no attribute {unknown[0]!r}; choose from {sorted(info['classes'])}"
        )
    if name in eval_cfg.zeroshot:
        for attr in attributes:
            spec = info["label_keys"][attr]
            if spec == out.label_key:
                label = "label"
            else:  # another attribute: a JSON field looked up by sample key after extraction
                label = spec.split(":", 1)[1]
                out.json_labels.append(label)
            out.zeroshot[attr] = ZeroShotTask(label, info["classes"][attr], info["prompts"][attr])
    if name in eval_cfg.captioning:
        out.captioning = True
        if name == "shapes":  # its JSON names every attribute by index: score the captions' attributes
            out.attribute_names = {attr: info["classes"][attr] for attr in attributes}
    return out


def read_lines(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def wds_set(w) -> EvalSet:
    """Your labelled WebDataset (eval.wds): classification, and zero-shot when classnames are given."""
    if not w.test_urls:
        raise ValueError(
            "eval.classification lists 'wds' but eval.wds.test_urls is not set; give the labelled "
            "shards, eval_cfg.g. eval.wds.train_urls=/data/x/train eval.wds.test_urls=/data/x/test"
        )
    out = EvalSet(
        name="wds",
        test_urls=expand_urls(w.test_urls),
        label_key=w.label_key,
        train_urls=expand_urls(w.train_urls) if w.train_urls else None,
    )
    if w.classnames:
        out.classnames = read_lines(w.classnames)
        templates = read_lines(w.templates) if w.templates else DEFAULT_TEMPLATES
        out.zeroshot["label"] = ZeroShotTask("label", out.classnames, templates)
    return out


def _numeric(path: str) -> tuple:
    stem = Path(path).name.split(".", 1)[0]
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def split_shards(directory: Path, split: str) -> list[str] | None:
    """A CLIP_benchmark split's shards: {0..n-1}.tar as nshards.txt says, else every .tar in
    numeric order; None when the split is not there."""
    folder = directory / split
    if not folder.is_dir():
        return None
    count_file = folder / "nshards.txt"
    if count_file.is_file():
        text = count_file.read_text().strip()
        if not text.isdigit():
            raise ValueError(f"{count_file} should hold the number of shards, found {text[:40]!r}")
        shards = [str(folder / f"{i}.tar") for i in range(int(text))]
        missing = [s for s in shards if not os.path.isfile(s)]
        if missing:
            raise ValueError(f"{count_file} says {text} shards but {missing[0]} does not exist")
        return shards
    shards = sorted((str(p) for p in folder.glob("*.tar")), key=_numeric)
    return shards or None


def dataset_type(directory: Path, first_shard: str) -> str:
    """'classification' or 'retrieval': dataset_type.txt if there, else what the first sample holds
    (.cls: classification; .txt only: retrieval)."""
    type_file = directory / "dataset_type.txt"
    if type_file.is_file():
        kind = type_file.read_text().strip().lower()
        if kind not in ("classification", "retrieval"):
            raise ValueError(f"{type_file} says {kind!r}; pretrain_mm evaluates 'classification' and 'retrieval' sets")
        return kind
    for sample in iter_shard(first_shard, frozenset({"cls", "txt"})):
        if "cls" in sample:
            return "classification"
        if "txt" in sample:
            return "retrieval"
        break
    raise ValueError(
        f"cannot tell the type of {directory}: no dataset_type.txt, and the first sample of "
        f"{first_shard} holds neither .cls (classification) nor .txt (retrieval)"
    )


def clip_benchmark_set(directory) -> EvalSet:
    """A directory in CLIP_benchmark's webdataset layout: test/{0..n}.tar (+ nshards.txt), optional
    train/, classnames.txt and zeroshot_classification_templates.txt (templates with {c}),
    dataset_type.txt. Classification: zero-shot (with class names), probe / k-NN when train/ is
    there. Retrieval: .txt holds an image's captions, one per line."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise ValueError(f"eval.clip_benchmark_dirs: {directory} is not a directory")
    test = split_shards(root, "test")
    if not test:
        raise ValueError(
            f"eval.clip_benchmark_dirs: {directory} holds no test/*.tar shards (CLIP_benchmark's "
            "layout: test/0.tar, test/1.tar, ..., classnames.txt, zeroshot_classification_templates.txt)"
        )
    name = root.name or str(root)
    if dataset_type(root, test[0]) == "retrieval":
        return EvalSet(
            name=name, test_urls=test, caption_key="txt", split_captions=True, retrieval=True, captioning=True
        )
    out = EvalSet(name=name, test_urls=test, train_urls=split_shards(root, "train"), label_key="cls")
    if (root / "classnames.txt").is_file():
        out.classnames = read_lines(root / "classnames.txt")
        templates_file = root / "zeroshot_classification_templates.txt"
        templates = read_lines(templates_file) if templates_file.is_file() else DEFAULT_TEMPLATES
        out.zeroshot["label"] = ZeroShotTask("label", out.classnames, templates)
    else:
        log.warning("%s has no classnames.txt: no zero-shot classification on it", directory)
    return out


def eval_sets(eval_cfg: EvalConfig, root: str | None = None) -> list[EvalSet]:
    """Every set the eval config names, each once with all the tasks asked of it."""
    sets = []
    names = [*eval_cfg.zeroshot, *eval_cfg.retrieval, *eval_cfg.classification, *eval_cfg.captioning]
    for name in dict.fromkeys(names):
        if name == "wds":
            sets.append(wds_set(eval_cfg.wds))
        else:
            sets.append(builtin_set(name, eval_cfg, root))
    sets.extend(clip_benchmark_set(d) for d in eval_cfg.clip_benchmark_dirs)
    return sets


def read_json_labels(urls: list[str], fields: list[str]) -> dict[str, dict[str, int]]:
    """{sample key: {field: value}} of integer JSON fields, read straight from the shards."""
    out = {}
    pattern = re.compile(r"^-?\d+$")
    for url in urls:
        for sample in iter_shard(url, frozenset({"json"})):
            meta = json.loads(sample.get("json") or b"{}")
            out[sample["__key__"]] = {f: int(meta[f]) for f in fields if pattern.match(str(meta.get(f, "")))}
    return out


def attach_json_labels(features, urls: list[str], fields: list[str]) -> None:
    """Add Features.labels[field] for each JSON field, matched by sample key."""
    if not fields:
        return
    table = read_json_labels(urls, fields)
    for f in fields:
        try:
            values = [table[key][f] for key in features.keys]
        except KeyError as error:
            raise ValueError(f"a sample of {urls[0]} ... has no integer JSON field {f!r} ({error})") from error
        device = next(iter(features.image.values())).device
        features.labels[f] = torch.tensor(values, dtype=torch.long, device=device)
