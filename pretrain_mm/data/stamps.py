"""Built-in `stamps`: Tux Paint's clip-art stamps (GPL-2) with their English captions, read from the Debian package."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import posixpath
import random
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from typing import BinaryIO

from PIL import Image

from .shards import ShardWriter, write_samples

PACKAGE = "tuxpaint-stamps-default"
DEB_ENV = "PRETRAIN_MM_STAMPS_DEB"
STAMPS_DIR = "usr/share/tuxpaint/stamps/"
STAMPS_DEFAULTS = {"image_size": 64, "val_fraction": 0.15, "seed": 0}
# Zero-shot classes: the top-level categories with 15+ described PNGs (2022.06.04: symbols 247 ...
# space 16), named to read well in a prompt. The smaller ones (hobbies 13, sports 12, military 8,
# people 6, medical 5, naturalforces 3) would get one or two val images: they stay in train, unclassed.
CLASSES = {
    "animals": "animal",
    "clothes": "piece of clothing",
    "food": "food item",
    "household": "household object",
    "plants": "plant",
    "seasonal": "holiday decoration",
    "space": "space object",
    "symbols": "symbol",
    "town": "building or street sign",
    "vehicles": "vehicle",
}
# Zero-shot prompts in wording no training caption uses (checked against the captions at build time;
# a template whose wording occurs is dropped): zero-shot then measures transfer, not recall of a caption.
PROMPT_TEMPLATES = (
    "a drawing of a {}.",
    "clip art of a {}.",
    "an illustration of a {}.",
    "a cartoon picture of a {}.",
    "a simple icon showing a {}.",
    "a sketch of a {}.",
    "a sticker with a {} on it.",
    "a colourful drawing: {}.",
)
CLIP_BENCHMARK_DIR = "clip_benchmark"


# ----------------------------------------------------------------------------- reading the .deb


class _Slice(io.RawIOBase):
    """A read-only window [offset, offset + size) of an open file (one ar member), so the 160 MB
    data tarball is decompressed as a stream instead of read into memory first."""

    def __init__(self, f: BinaryIO, offset: int, size: int):
        self.f, self.pos, self.end = f, offset, offset + size

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        self.f.seek(self.pos)
        data = self.f.read(max(0, min(len(buf), self.end - self.pos)))
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _ar_members(f: BinaryIO, path: str) -> dict[str, tuple[int, int]]:
    """{name: (offset, size)} of an ar archive (a .deb): 8-byte magic, then members each behind a
    60-byte header (name 16, mtime 12, uid 6, gid 6, mode 8, size 10, '`\\n'), padded to even size."""
    if f.read(8) != b"!<arch>\n":
        raise ValueError(f"{path} is not a Debian package (.deb, an ar archive); give {PACKAGE}'s .deb")
    out: dict[str, tuple[int, int]] = {}
    offset = 8
    while True:
        header = f.read(60)
        if len(header) < 60:
            return out
        if header[58:60] != b"`\n" or not header[48:58].strip().isdigit():
            raise ValueError(f"{path}: damaged ar header at byte {offset}; download {PACKAGE}'s .deb again")
        size = int(header[48:58])
        out[header[:16].decode("ascii", "replace").strip().rstrip("/")] = (offset + 60, size)
        offset += 60 + size + (size & 1)
        f.seek(offset)


def _member_stream(f: BinaryIO, members: dict, stem: str, path: str) -> io.BufferedIOBase:
    """The decompressed stream of control.tar.* / data.tar.* (xz, gz or uncompressed; zstd would need
    a package this project does not depend on, and Debian's own packages use xz)."""
    for name, (offset, size) in members.items():
        if name == stem or name.startswith(stem + "."):
            raw = io.BufferedReader(_Slice(f, offset, size), 1 << 20)
            if name.endswith(".xz"):
                return lzma.open(raw)
            if name.endswith(".gz"):
                return gzip.open(raw)
            if name == stem:
                return raw
            raise ValueError(f"{path}: {name} is compressed in a way this reader does not know (xz, gz, none)")
    raise ValueError(f"{path} holds no {stem}.*: not a Debian package")


def _safe_files(stream: io.BufferedIOBase, keep) -> dict[str, bytes]:
    """{normalised path: bytes} of the regular files of a tar stream whose path `keep` accepts; writes
    nothing. Links, devices, paths climbing out ('..') and what the 'data' filter refuses are skipped."""
    out = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = posixpath.normpath(member.name.lstrip("/"))
            if not member.isfile() or name.startswith("..") or "\0" in name or not keep(name):
                continue
            try:  # tarfile's 'data' filter (Python >= 3.10.12 / 3.11.4; the checks above suffice without it)
                getattr(tarfile, "data_filter", lambda m, _: m)(member, "/nonexistent-dest")
            except tarfile.TarError:
                continue
            data = tar.extractfile(member)
            assert data is not None  # a regular file (checked above)
            out[name] = data.read()
    return out


def read_deb(path: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """(control fields, {path: bytes} of the stamps' .png/.txt/.dat files) of the package's .deb."""
    try:
        with open(path, "rb") as f:
            members = _ar_members(f, path)
            control_files = _safe_files(_member_stream(f, members, "control.tar", path), lambda n: n == "control")
            text = control_files.get("control", b"").decode("utf-8", "replace")
            control = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line and line[0] != " ")
            if control.get("Package") != PACKAGE:
                raise ValueError(f"{path} is the package {control.get('Package')!r}, not {PACKAGE}")
            files = _safe_files(
                _member_stream(f, members, "data.tar", path),
                lambda n: n.startswith(STAMPS_DIR) and n.endswith((".png", ".txt", ".dat")),
            )
    except (OSError, EOFError, lzma.LZMAError, tarfile.TarError, zlib.error) as error:  # truncated, damaged
        raise ValueError(f"{path}: cannot read it as {PACKAGE}'s .deb ({error}); download it again") from None
    return control, files


def obtain_deb(tmp: str) -> str:
    """$PRETRAIN_MM_STAMPS_DEB if set, else the package fetched by `apt-get download` into tmp."""
    local = os.environ.get(DEB_ENV)
    if local:
        if not os.path.isfile(local):
            raise ValueError(f"{DEB_ENV}={local}: no such file; give the path of a {PACKAGE}_*.deb or unset it")
        return local
    hint = f"run `apt-get update` (as root) or set {DEB_ENV}=/path/to/{PACKAGE}_*.deb"
    try:
        run = subprocess.run(
            ["apt-get", "download", PACKAGE], cwd=tmp, capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ValueError(f"cannot run `apt-get download {PACKAGE}` ({error}); {hint}") from None
    debs = sorted(n for n in os.listdir(tmp) if n.endswith(".deb"))
    if run.returncode != 0 or not debs:
        lines = run.stderr.strip().splitlines() or [f"exit status {run.returncode}"]
        last = next((line for line in reversed(lines) if line.startswith("E:")), lines[-1])  # apt's error
        raise ValueError(f"`apt-get download {PACKAGE}` failed ({last}); {hint}")
    return os.path.join(tmp, debs[0])


# ----------------------------------------------------------------------------- samples


def stamp_records(files: dict[str, bytes]) -> list[dict]:
    """One record per PNG stamp that has a description (.txt beside it; its first line is English,
    later lines are translations). PNGs without one are skipped, not named from their file names:
    in 2022.06.04 all 11 are '*_mirror.png', Tux Paint's pre-mirrored copies of a described stamp,
    so a caption would only duplicate an image already there. SVG stamps are not read."""
    out = []
    for path in sorted(p for p in files if p.endswith(".png")):
        stem, description = path[:-4], files.get(path[:-4] + ".txt")
        first = description.decode("utf-8-sig", "replace").splitlines()[0] if description else ""
        caption = " ".join(first.split())
        if not caption or ".utf8=" in caption:
            continue
        rel = path[len(STAMPS_DIR) :]
        category = rel.split("/", 1)[0]  # the top-level folder: animals, food, symbols, ...
        # Tux Paint marks stamps that must not be mirrored (letters, signs, coins): kept for the record.
        mirror_ok = b"nomirror" not in files.get(stem + ".dat", b"")
        out.append(
            {
                "path": rel,
                "caption": caption,
                "category": category,
                "mirror_ok": mirror_ok,
                "label": list(CLASSES).index(category) if category in CLASSES else None,
            }
        )
    return out


def split_records(records: list[dict], val_fraction: float, seed: int) -> dict[str, list[int]]:
    """Indices of train and val: per class a seeded random val_fraction of its images. Images sharing a
    caption (case-folded as the tokenizer does: the filled and outlined 'The letter a.') are near-duplicates
    and share a split, so no val caption is a train caption; a caption shared across categories ('A
    butterfly.': animals, seasonal) stays in train, as do the unclassed categories."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"stamps: val_fraction must be between 0 and 1, got {val_fraction}")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r["caption"].lower(), []).append(i)
    val: list[int] = []
    for category in CLASSES:
        mine = [g for _, g in sorted(groups.items()) if {records[i]["category"] for i in g} == {category}]
        random.Random(f"stamps/{seed}/{category}").shuffle(mine)
        target = round(val_fraction * sum(r["category"] == category for r in records))
        taken = 0
        for g in mine:
            if taken + len(g) <= target:
                val.extend(g)
                taken += len(g)
        if taken == 0:
            raise ValueError(f"stamps: val_fraction={val_fraction} leaves class {category!r} no val image")
    chosen = set(val)
    return {"train": [i for i in range(len(records)) if i not in chosen], "val": sorted(val)}


def render(png: bytes, size: int) -> bytes:
    """A stamp as a size x size PNG: cropped to its opaque part, composited onto white before resizing
    (transparent pixels' colours would fringe the edges), scaled to fit (up too), aspect kept, centred."""
    img = Image.open(io.BytesIO(png)).convert("RGBA")
    box = img.getchannel("A").getbbox()
    if box:
        img = img.crop(box)
    flat = Image.new("RGBA", img.size, (255, 255, 255, 255))
    flat.alpha_composite(img)
    scale = size / max(flat.size)
    w, h = max(1, round(flat.width * scale)), max(1, round(flat.height * scale))
    small = flat.convert("RGB").resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(small, ((size - w) // 2, (size - h) // 2))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def unseen_prompts(templates, captions) -> list[str]:
    """The templates whose wording no training caption holds: neither the text with '{}' removed nor
    any piece of two or more words between the '{}'s (lower-cased, outer punctuation stripped)."""
    text = [c.lower() for c in captions]
    kept = []
    for t in templates:
        pieces = [" ".join(t.replace("{}", " ").split())] + [p for p in t.split("{}") if len(p.split()) >= 2]
        pieces = [p.strip(" .,:;!?").lower() for p in pieces]
        if not any(p and p in c for p in pieces for c in text):
            kept.append(t)
    return kept


def write_stamps(out_dir: str, params: dict, shard_size: int) -> tuple[dict, list[str]]:
    """Write the stamps set's shards into out_dir: {train,val}/*.tar (+ sizes.json) and clip_benchmark/
    (val as a CLIP_benchmark classification set). Returns (classes.json's info, the train captions):
    builtin.write_builtin saves both, with the tokenizer, as for every built-in set."""
    tmp = tempfile.mkdtemp(prefix="stamps-deb-")
    try:
        deb = obtain_deb(tmp)
        control, files = read_deb(deb)
        with open(deb, "rb") as f:
            digest = hashlib.sha256()
            while block := f.read(1 << 20):
                digest.update(block)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    records = stamp_records(files)
    assert len(records) > 500, f"only {len(records)} described PNG stamps in {PACKAGE}: a different layout?"
    split = split_records(records, float(params["val_fraction"]), int(params["seed"]))
    train_captions = [records[i]["caption"] for i in split["train"]]
    prompts = unseen_prompts(PROMPT_TEMPLATES, train_captions)
    assert len(prompts) >= 4, f"only {prompts} of the zero-shot templates are unseen in training captions"
    rendered: dict[int, bytes] = {}

    def samples(indices):
        for i in indices:
            r = records[i]
            rendered[i] = render(files[STAMPS_DIR + r["path"]], int(params["image_size"]))
            meta = {k: r[k] for k in ("caption", "category", "label", "path", "mirror_ok")}
            members = {"png": rendered[i], "txt": r["caption"], "json": json.dumps(meta, sort_keys=True)}
            if r["label"] is not None:  # no .cls: probes and k-NN skip the unclassed train images
                members["cls"] = str(r["label"])
            yield f"{i:05d}", members

    for name, indices in split.items():
        write_samples(
            samples(indices), os.path.join(out_dir, name), shard_size, total=len(indices), desc=f"stamps/{name}"
        )

    # The val split again in CLIP_benchmark's webdataset layout (eval.clip_benchmark_dirs).
    bench = os.path.join(out_dir, CLIP_BENCHMARK_DIR)
    with ShardWriter(os.path.join(bench, "test"), shard_size=len(split["val"]), name_format="{}.tar") as writer:
        for i in split["val"]:
            writer.write(f"{i:05d}", {"png": rendered[i], "cls": str(records[i]["label"])})
    for name, lines in (
        ("classnames.txt", CLASSES.values()),
        ("dataset_type.txt", ["classification"]),
        ("test/nshards.txt", ["1"]),
        ("zeroshot_classification_templates.txt", [p.replace("{}", "{c}") for p in prompts]),
    ):
        with open(os.path.join(bench, name), "w", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))

    categories = sorted({r["category"] for r in records})
    counts = {
        name: {c: sum(records[i]["category"] == c for i in idx) for c in categories} for name, idx in split.items()
    }
    info = {
        "name": "stamps",
        "params": params,
        "label": "category",
        "classes": {"category": list(CLASSES.values())},
        "label_keys": {"category": "cls"},
        "prompts": {"category": prompts},
        "categories": dict(CLASSES),
        "counts": counts,
        "source": {
            "package": PACKAGE,
            "version": control.get("Version"),
            "sha256": digest.hexdigest(),
            "license": "GPL-2",
            "upstream": "Tux Paint stamps, https://tuxpaint.org",
        },
        "notes": "Tux Paint stamps composited onto white and padded to a square; captions are the stamps' "
        "English descriptions; val holds only the classed categories; stamps marked nomirror "
        "(letters, signs, coins: json:mirror_ok false) are wrong when flipped (hflip=False); train "
        "images of the small categories have no .cls, so probes and k-NN skip them (no_label)",
        "eval_note": "val: per category a seeded random share of the stamps, images with the same caption kept "
        "together (no val caption is a train caption); zero-shot prompts are templates whose "
        "wording no training caption holds",
    }
    return info, train_captions
