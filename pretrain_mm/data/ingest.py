"""Turning a folder of captioned images, or a CSV/TSV/parquet table of them, into shards."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterator

from .decode import IMAGE_EXTS, as_int, decode_image
from .shards import write_samples
from .tokenizer import TOKENIZER_FILE, train_tokenizer

TABLE_EXTS = (".csv", ".tsv", ".parquet")
CLASSES_FILE = "classes.json"


def read_table(path: str, columns: list[str]) -> list[dict]:
    """Rows of a .csv/.tsv (header row) or .parquet file; ValueError if a needed column is missing."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exn:
            raise ValueError(f"reading {path!r} needs pyarrow: pip install pyarrow (or give a CSV/TSV)") from exn
        rows = pq.read_table(path).to_pylist()
        header = list(rows[0]) if rows else []
    elif ext in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
            rows, header = list(reader), list(reader.fieldnames or [])
    else:
        raise ValueError(f"table {path!r} must be .csv, .tsv or .parquet")
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(
            f"table {path!r} has no column(s) {missing}; its columns are {header}; "
            "name the right ones with --path-col/--caption-col/--label-col"
        )
    return rows


def _records(source: str, root: str | None, path_col: str, caption_col: str, label_col: str | None) -> list[tuple]:
    """(image path, relative name, caption or None, label or None) in a deterministic order."""
    if os.path.isdir(source):
        out = []
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for name in sorted(filenames):
                stem, ext = os.path.splitext(name)
                if ext.lower().lstrip(".") not in IMAGE_EXTS:
                    continue
                caption_file = os.path.join(dirpath, stem + ".txt")
                caption = None
                if os.path.isfile(caption_file):
                    with open(caption_file, encoding="utf-8") as f:
                        caption = f.read().strip()
                path = os.path.join(dirpath, name)
                out.append((path, os.path.relpath(path, source), caption, None))
        if not out:
            raise ValueError(f"folder {source!r} holds no images ({', '.join(IMAGE_EXTS)})")
        return out
    if os.path.isfile(source) and source.lower().endswith(TABLE_EXTS):
        rows = read_table(source, [path_col, caption_col] + ([label_col] if label_col else []))
        base = root or os.path.dirname(os.path.abspath(source))
        return [
            (
                os.path.join(base, str(r[path_col])),
                str(r[path_col]),
                (str(r[caption_col]).strip() if r[caption_col] is not None else None),
                (r[label_col] if label_col else None),
            )
            for r in rows
        ]
    raise ValueError(f"source {source!r} is neither a folder of images nor a .csv/.tsv/.parquet table")


def _label_ids(records: list[tuple]) -> tuple[dict, list[str] | None]:
    """Integer labels stay; any other labels become indices into their sorted names."""
    labels = [r[3] for r in records if r[3] not in (None, "")]
    if not labels:
        return {}, None
    if all(as_int(v) is not None for v in labels):
        return {v: as_int(v) for v in labels}, None
    names = sorted({str(v) for v in labels})
    return {v: names.index(str(v)) for v in labels}, names


def write_dataset(
    source: str,
    out_dir: str,
    *,
    shard_size: int = 1000,
    root: str | None = None,
    path_col: str = "path",
    caption_col: str = "caption",
    label_col: str | None = None,
    vocab_size: int = 0,
    verify: bool = True,
    require_caption: bool = True,
) -> dict:
    """Write a folder (captions in a .txt beside each image) or a table into shards, deterministically.

    Each sample holds the original image bytes, .txt caption, .json metadata (caption, label,
    source) and .cls label when labels exist. Images that do not decode (verify) or lack a caption
    (require_caption) are left out and counted. vocab_size > 0 also trains tokenizer.json."""
    records = _records(source, root, path_col, caption_col, label_col)
    label_ids, class_names = _label_ids(records)
    skipped: Counter = Counter()
    captions: list[str] = []

    def samples() -> Iterator[tuple[str, dict]]:
        index = 0
        for path, rel, caption, label in records:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                skipped["unreadable"] += 1
                continue
            if verify:
                try:
                    decode_image(data)
                except Exception:  # whatever Pillow raises for bad bytes
                    skipped["bad_image"] += 1
                    continue
            if not caption and require_caption:
                skipped["no_caption"] += 1
                continue
            ext = os.path.splitext(path)[1].lower().lstrip(".")
            meta = {"source": rel}
            members: dict = {ext: data}
            if caption:
                members["txt"] = meta["caption"] = caption
                captions.append(caption)
            if label not in (None, ""):
                meta["label"] = label_ids[label]
                members["cls"] = str(label_ids[label])
            members["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False)
            yield f"{index:09d}", members
            index += 1

    sizes = write_samples(
        samples(), out_dir, shard_size, total=len(records), desc=f"writing {os.path.basename(out_dir)}"
    )
    if not sizes:
        raise ValueError(f"no sample of {source!r} could be written (left out: {dict(skipped)})")
    if class_names is not None:
        with open(os.path.join(out_dir, CLASSES_FILE), "w") as f:
            f.write(json.dumps({"classes": {"label": class_names}, "label_keys": {"label": "cls"}}, indent=2) + "\n")
    if vocab_size and captions:
        train_tokenizer(captions, vocab_size=vocab_size).save(os.path.join(out_dir, TOKENIZER_FILE))
    return {"written": sum(sizes.values()), "shards": len(sizes), "skipped": dict(skipped), "out_dir": out_dir}
