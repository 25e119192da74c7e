"""Shard sets on disk: URL expansion, sizes.json, deterministic tar writing and safe tar reading."""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
import warnings
from collections.abc import Iterable, Mapping, Sequence

import braceexpand

SIZES_FILE = "sizes.json"


# --------------------------------------------------------------------------- URL expansion


def is_remote(url: str) -> bool:
    """A URL that is not a local file: http://, s3://, pipe:... (read through webdataset's gopen)."""
    return "://" in url and not url.startswith("file://") or url.startswith("pipe:")


def _split_top_level(spec: str) -> list[str]:
    """Split on '::' and on commas that are not inside braces."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in spec.replace("::", ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _expand_one(pattern: str) -> list[str]:
    if is_remote(pattern):
        return list(braceexpand.braceexpand(pattern))
    path = os.path.expanduser(pattern[len("file://") :] if pattern.startswith("file://") else pattern)
    if os.path.isdir(path):
        found = sorted(
            f for ext in ("*.tar", "*.tar.gz", "*.tgz") for f in glob.glob(os.path.join(glob.escape(path), ext))
        )
        if not found:
            raise ValueError(
                f"shard directory {pattern!r} holds no .tar (.tar.gz, .tgz) files; write shards with "
                "`python -m pretrain_mm.data write` or point at the right directory"
            )
        return found
    result: list[str] = []
    for item in braceexpand.braceexpand(path):
        result.extend(sorted(glob.glob(item)) if glob.has_magic(item) else [item])
    existing = [r for r in result if os.path.isfile(r)]
    if not existing:
        raise ValueError(
            f"shard pattern {pattern!r} matches no file; check the path, "
            "e.g. 'data/{00000..00099}.tar', a directory of .tar files, or a list of files"
        )
    if len(existing) < len(result):
        missing = [r for r in result if not os.path.isfile(r)]
        warnings.warn(
            f"{len(missing)} of {len(result)} shards of {pattern!r} do not exist "
            f"(e.g. {missing[0]!r}); they will be skipped and counted as unreadable",
            stacklevel=3,
        )
    return result


def expand_urls(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand a directory, a brace/glob pattern, a comma- or '::'-separated string, or a list of
    any of these into the list of shard URLs. Raises ValueError naming the pattern if nothing is found."""
    if isinstance(urls, (str, os.PathLike)):
        parts = _split_top_level(os.fspath(urls))
    elif isinstance(urls, Iterable):
        parts = [p for u in urls for p in _split_top_level(os.fspath(u))]
    else:
        raise ValueError(f"shards must be a path, a pattern or a list of them, not {type(urls).__name__}")
    if not parts:
        raise ValueError(
            f"empty shard set {urls!r}: give a directory, a pattern like "
            "'data/{00000..00099}.tar', or a list of .tar files"
        )
    return [u for p in parts for u in _expand_one(p)]


def describe(urls: Sequence[str]) -> str:
    """A short human description of a shard list, for error messages."""
    return urls[0] if len(urls) == 1 else f"{urls[0]} ... {urls[-1]} ({len(urls)} shards)"


# --------------------------------------------------------------------------- sizes.json


def read_sizes(urls: Sequence[str]) -> dict[str, int] | None:
    """Sample counts per shard URL from the sizes.json files beside them, or None if any is unknown."""
    out: dict[str, int] = {}
    cache: dict[str, dict] = {}
    for url in urls:
        directory = os.path.dirname(url)
        if directory not in cache:
            try:
                with open(os.path.join(directory, SIZES_FILE)) as f:
                    cache[directory] = json.load(f)
            except (OSError, ValueError):
                return None
        value = cache[directory].get(os.path.basename(url))
        if not isinstance(value, int):
            return None
        out[url] = value
    return out


def write_sizes(directory: str, counts: Mapping[str, int], merge: bool = True) -> str:
    """Write {shard basename: count} to directory/sizes.json (merged with what is there), atomically."""
    path = os.path.join(directory, SIZES_FILE)
    sizes: dict[str, int] = {}
    if merge and os.path.exists(path):
        try:
            with open(path) as f:
                sizes = {k: v for k, v in json.load(f).items() if isinstance(v, int)}
        except (OSError, ValueError, AttributeError):
            sizes = {}
    sizes.update(counts)
    _atomic_write(path, (json.dumps(sizes, indent=2, sort_keys=True) + "\n").encode())
    return path


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- writing


def _check_key(key: str) -> None:
    if not key or "." in key or "/" in key or key.startswith("__"):
        raise ValueError(f"sample key {key!r} must be non-empty, without '.' or '/', and not start with '__'")


class ShardWriter:
    """Write samples into tar shards of `shard_size` samples, byte-for-byte deterministically.

    Every member gets mtime 0, uid/gid 0, empty user/group names and mode 0o444; members of a
    sample are sorted by extension. Shards are written to a temp file and renamed; close() writes
    sizes.json. Use as a context manager.
    """

    def __init__(self, out_dir: str, shard_size: int = 1000, name_format: str = "{:05d}.tar"):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir, self.shard_size, self.name_format = out_dir, shard_size, name_format
        os.makedirs(out_dir, exist_ok=True)
        self.sizes: dict[str, int] = {}
        self._tar: tarfile.TarFile | None = None
        self._tmp = self._name = ""
        self._keys: set[str] = set()

    def _open_next(self) -> None:
        self._close_shard()
        self._name = self.name_format.format(len(self.sizes))
        self._tmp = os.path.join(self.out_dir, f".{self._name}.tmp")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT, encoding="utf-8")
        self.sizes[self._name] = 0
        self._keys = set()

    def _close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.replace(self._tmp, os.path.join(self.out_dir, self._name))
            self._tar = None

    def write(self, key: str, members: Mapping[str, bytes | str]) -> None:
        """Add one sample: members maps extension ('jpg', 'txt', ...) to bytes or text."""
        _check_key(key)
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        if self._tar is None or self.sizes[self._name] >= self.shard_size:
            self._open_next()
        tar = self._tar
        assert tar is not None  # _open_next opened one
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in shard {self._name}")
        self._keys.add(key)
        for ext in sorted(members):
            data = members[ext]
            data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
        self.sizes[self._name] += 1

    def close(self) -> dict[str, int]:
        self._close_shard()
        if self.sizes:
            write_sizes(self.out_dir, self.sizes, merge=False)
        return dict(self.sizes)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:
            self._tar.close()
            os.unlink(self._tmp)
            self._tar = None


def write_samples(
    samples: Iterable[tuple[str, Mapping[str, bytes | str]]],
    out_dir: str,
    shard_size: int = 1000,
    total: int | None = None,
    desc: str = "writing shards",
) -> dict[str, int]:
    """Write (key, members) pairs with a progress bar; returns {shard name: sample count}."""
    from tqdm import tqdm

    with ShardWriter(out_dir, shard_size) as writer:
        for key, members in tqdm(samples, total=total, desc=desc, unit="sample", mininterval=0.5):
            writer.write(key, members)
    return dict(writer.sizes)
