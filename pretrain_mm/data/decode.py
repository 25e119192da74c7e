"""Safe decoding of shard members (images, text, JSON and class labels only, chosen by key specs), and the
counter of what is skipped."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger("pretrain_mm.data")

try:  # about twice as fast as Pillow on JPEGs; deprecated in torchvision 0.29, so optional
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as _tv_decode_jpeg
except ImportError:  # pragma: no cover
    _tv_decode_jpeg = None

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Pillow is only allowed to parse these formats: no EPS (Ghostscript), no exotic plugins.
PIL_FORMATS = ("JPEG", "PNG", "WEBP")
# Members with these extensions are never read, whatever the key specs say: they hold pickles
# or tensors whose loaders can run code.
UNSAFE_EXTS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "npy", "npz", "mp", "msgpack", "ten"})

_INT = re.compile(r"^[-+]?\d+$")

DEFAULT_IMAGE_KEY = "jpg;png;jpeg;webp"
DEFAULT_CAPTION_KEY = "txt"


class SkipSample(Exception):
    """A sample that cannot be used; `reason` is the counter it goes to."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def parse_key_spec(spec: str | None, role: str) -> list[tuple[str, str | None]]:
    """Parse "jpg;png" or "txt;json:caption" into [(ext, json_field_or_None), ...].

    `role` (image, caption, label) only makes the error messages say which option was wrong.
    """
    if spec is None:
        return []
    out: list[tuple[str, str | None]] = []
    for part in str(spec).split(";"):
        part = part.strip()
        if not part:
            continue
        ext, _, field_text = part.partition(":")
        ext = ext.strip().lower().lstrip(".")
        field = field_text.strip() or None
        if not ext:
            raise ValueError(f"{role}_key {spec!r}: empty extension in {part!r}; write e.g. 'txt' or 'json:caption'")
        if ext in UNSAFE_EXTS:
            raise ValueError(
                f"{role}_key {spec!r}: refusing to read '.{ext}' members, they may hold pickles that run code; "
                "store images, text, JSON or .cls labels instead"
            )
        if ext == "json" and field is None and role != "image":
            raise ValueError(f"{role}_key {spec!r}: say which JSON field to use, e.g. 'json:{role}'")
        if field is not None and ext != "json":
            raise ValueError(f"{role}_key {spec!r}: a ':field' only applies to 'json', not '.{ext}'")
        if role == "image" and field is not None:
            raise ValueError(f"image_key {spec!r}: images are whole members, not JSON fields")
        out.append((ext, field))
    if not out:
        raise ValueError(f"{role}_key {spec!r} names no member; write e.g. {DEFAULT_IMAGE_KEY!r}")
    return out


def spec_exts(*specs: list[tuple[str, str | None]]) -> frozenset[str]:
    """The member extensions that the given parsed specs need read from the tar."""
    return frozenset(ext for spec in specs for ext, _ in spec)


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF marker, or None if the markers cannot be walked."""
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in _SOF_MARKERS:
            height, width = (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8]
            return (width, height) if width and height else None
        if marker == 0xDA:  # scan data before any frame header
            return None
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def pil_to_chw(img: Image.Image) -> torch.Tensor:
    """A PIL image of any mode as a 3 x H x W uint8 RGB tensor (palette transparency handled)."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return torch.from_numpy(np.array(img.convert("RGB") if img.mode != "RGB" else img)).permute(2, 0, 1)


def _fast_jpeg(data: bytes) -> torch.Tensor:
    if _tv_decode_jpeg is None:
        raise RuntimeError("torchvision has no JPEG decoder")
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders; Pillow is the fallback
        warnings.simplefilter("ignore", DeprecationWarning)
        return _tv_decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def decode_image(data: bytes) -> torch.Tensor:
    """Decode JPEG, PNG or WEBP bytes to a 3 x H x W uint8 RGB tensor; raises on anything else or
    undecodable. JPEGs go through torchvision's libjpeg-turbo decoder after a size check (Pillow's
    decompression-bomb limit); other formats, and JPEGs it rejects, through Pillow, restricted to
    these formats so that no other parser ever sees shard bytes."""
    if data[:3] == b"\xff\xd8\xff":
        size = jpeg_size(data)
        if size is not None:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and size[0] * size[1] > 2 * limit:
                raise ValueError(f"image of {size[0]}x{size[1]} pixels exceeds the decompression-bomb limit")
            try:
                return _fast_jpeg(data)
            except (RuntimeError, ValueError, TypeError):
                pass  # let Pillow decide: it decodes some variants and raises on damage
    return pil_to_chw(Image.open(io.BytesIO(data), formats=PIL_FORMATS))


def decode_text(data: bytes) -> str:
    return data.decode("utf-8").strip()


def _json(sample: dict, cache: dict) -> Mapping[str, Any] | None:
    if "json" not in cache:
        raw = sample.get("json")
        try:
            value = json.loads(raw) if raw is not None else None
        except (ValueError, UnicodeDecodeError):
            value = None
        cache["json"] = value if isinstance(value, Mapping) else None
    return cache["json"]


def get_image_bytes(sample: dict, spec: list[tuple[str, str | None]]) -> bytes:
    for ext, _ in spec:
        data = sample.get(ext)
        if data:
            return data
    raise SkipSample("no_image", f"{sample.get('__key__')}: none of {[e for e, _ in spec]}")


def get_caption(sample: dict, spec: list[tuple[str, str | None]], cache: dict) -> str:
    for ext, field in spec:
        if field is None:
            data = sample.get(ext)
            try:
                text = decode_text(data) if data is not None else ""
            except UnicodeDecodeError:
                text = ""
        else:
            meta = _json(sample, cache)
            value = meta.get(field) if meta else None
            text = value.strip() if isinstance(value, str) else ""
        if text:
            return text
    raise SkipSample("no_caption", str(sample.get("__key__")))


def get_label(sample: dict, spec: list[tuple[str, str | None]], cache: dict) -> int:
    for ext, field in spec:
        if field is None:
            data = sample.get(ext)
            value: Any = data.decode("utf-8", "replace").strip() if data is not None else None
        else:
            meta = _json(sample, cache)
            value = meta.get(field) if meta else None
        label = as_int(value)
        if label is not None:
            return label
    raise SkipSample("no_label", str(sample.get("__key__")))


def as_int(value: Any) -> int | None:
    """An int, or a string holding one, as int; anything else (bools included) None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT.match(value.strip()):
        return int(value)
    return None


class SkipCounter:
    """A webdataset `handler=`: counts each exception by its `reason`, logs the first few, and
    returns True (skip the sample or shard, go on). `take()` returns the counts since the last take."""

    def __init__(self, limit: int | None = None):
        self.limit, self.consecutive = limit, 0
        self.total: Counter[str] = Counter()
        self.pending: Counter[str] = Counter()

    def __call__(self, exn: BaseException) -> bool:
        reason = getattr(exn, "reason", "error")
        self.total[reason] += 1
        self.pending[reason] += 1
        self.consecutive += 1
        n = self.total[reason]
        if n <= 3 or n % 1000 == 0:
            log.warning("skipped (%s, %d so far in this worker): %s", reason, n, exn, exc_info=reason == "error")
        if self.limit is not None and self.consecutive >= self.limit:
            raise RuntimeError(
                f"{self.consecutive} samples/shards in a row were skipped "
                f"({dict(self.total)}); check the shards and image_key/caption_key"
            ) from exn
        return True

    def take(self) -> dict[str, int]:
        out = dict(self.pending)
        self.pending.clear()
        return out
