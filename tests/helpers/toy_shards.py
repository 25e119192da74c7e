"""Small shard sets with chosen defects, for the tests of code that reads shards."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping

from PIL import Image

from pretrain_mm.data.shards import ShardWriter


def toy_image(index: int, size: int = 32, fmt: str = "JPEG") -> bytes:
    """A small solid-colour image whose colour encodes `index`."""
    colour = ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format=fmt)
    return buf.getvalue()


def write_toy_shards(
    out_dir: str,
    num_samples: int,
    shard_size: int,
    *,
    bad_image: Iterable[int] = (),
    no_caption: Iterable[int] = (),
    extra: Mapping[int, Mapping[str, bytes]] | None = None,
    image_size: int = 32,
) -> list[str]:
    """Write samples '{i:06d}' with .jpg, .txt ('caption i'), .cls (i % 10) and .json; the ones in
    bad_image get bytes that are not an image, the ones in no_caption no .txt, and `extra` adds
    members to chosen samples. Returns the shard paths."""
    bad, nocap, extra = set(bad_image), set(no_caption), extra or {}
    with ShardWriter(out_dir, shard_size) as writer:
        for i in range(num_samples):
            image = toy_image(i, image_size)
            members: dict = {
                "jpg": image[: len(image) // 2] if i in bad else image,  # a JPEG cut short
                "cls": str(i % 10),
                "json": json.dumps({"label": i % 10, "index": i}),
            }
            if i not in nocap:
                members["txt"] = f"caption {i}"
            members.update(extra.get(i, {}))
            writer.write(f"{i:06d}", members)
    return [os.path.join(out_dir, name) for name in sorted(writer.sizes)]


def truncate(path: str, keep_fraction: float = 0.5) -> None:
    """Cut a file to a fraction of its length (a shard interrupted while being copied)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep_fraction))
