"""Reading tar shards: a streaming tar parser that groups members into samples and detects truncation.

Python's tarfile stops silently at a truncated or damaged header; this parser tells those from a
complete shard, reads only the members asked for, and is several times faster.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, cast

from .shards import is_remote

BLOCK = 512
MAX_MEMBER_BYTES = 1 << 28  # a larger member is skipped unread (a damaged or hostile size field)
MAX_HEADER_BYTES = 1 << 20  # the same for pax / GNU long-name headers
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")


class ShardError(Exception):
    """A shard that cannot be read (to its end); `reason` is the skip counter it goes to."""

    reason = "unreadable_shard"


class TruncatedShard(ShardError):
    reason = "truncated_shard"


class EmptyShard(ShardError):
    reason = "empty_shard"


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) < n and data:  # pipes and sockets may return short reads
        parts = [data]
        while sum(map(len, parts)) < n:
            more = f.read(n - sum(map(len, parts)))
            if not more:
                break
            parts.append(more)
        data = b"".join(parts)
    return data


def _skip(f: BinaryIO, n: int) -> None:
    if n <= 0:
        return
    try:
        f.seek(n, 1)
    except (OSError, AttributeError, ValueError):
        while n > 0:
            chunk = f.read(min(n, 1 << 20))
            if not chunk:
                return  # the next header read reports the truncation
            n -= len(chunk)


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def iter_members(f: BinaryIO, want: Callable[[str], bool], where: str = "") -> Iterator[tuple[str, bytes | None]]:
    """Yield (name, None) for each regular member of a tar stream as its header is read, then, if
    want(name), (name, data) once its data is read; other members are skipped unread. Raises TruncatedShard
    if the stream ends before the end-of-archive
    marker, ShardError on a damaged header."""
    offset = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = _read(f, BLOCK)
        if len(header) < BLOCK:
            if offset == 0 and not header:
                raise ShardError(f"shard {where} is empty (0 bytes)")
            raise TruncatedShard(f"shard {where} ends early at byte {offset + len(header)} (no end-of-archive marker)")
        if header == _ZERO_BLOCK:
            return
        try:
            stored = _number(header[148:156])
            size = _number(header[124:136])
        except ValueError:
            stored, size = -1, 0
        if stored != sum(header) - sum(header[148:156]) + 256:
            where_ = "is not a tar file" if offset == 0 else f"has a damaged header at byte {offset}"
            raise ShardError(f"shard {where} {where_}")
        kind = header[156:157]
        if "size" in pax:
            size = int(pax["size"])
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        offset += BLOCK + padded
        if kind in (b"x", b"L", b"g"):
            if size > MAX_HEADER_BYTES:
                raise ShardError(f"shard {where} has an extended header of {size} bytes at byte {offset}")
            data = _read(f, padded)
            if len(data) < padded:
                raise TruncatedShard(f"shard {where} ends early inside a header")
            if kind == b"x":
                pax = _pax(data[:size])
            elif kind == b"L":
                long_name = data[:size].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind not in _REGULAR:
            _skip(f, padded)
            long_name, pax = None, {}
            continue
        name = pax.get("path") or long_name
        if name is None:
            raw_name = header[:100].split(b"\0", 1)[0]
            if header[257:262] == b"ustar" and header[345:346] != b"\0":
                raw_name = header[345:500].split(b"\0", 1)[0] + b"/" + raw_name
            name = raw_name.decode("utf-8", "surrogateescape")
        long_name, pax = None, {}
        if want(name) and size <= MAX_MEMBER_BYTES:
            yield name, None  # announce the member before reading it: the previous sample is complete
            data = _read(f, size)
            if len(data) < size:
                raise TruncatedShard(f"shard {where} ends early inside member {name!r}")
            _skip(f, padded - size)
            yield name, data
        else:
            _skip(f, padded)
            yield name, None


def open_shard(url: str) -> BinaryIO:
    """Open a local path (or file:// URL) or, through webdataset's gopen, a remote/pipe: URL;
    gzip-compressed tars are decompressed on the fly."""
    path = url[len("file://") :] if url.startswith("file://") else url
    if is_remote(path):
        import webdataset as wds

        return wds.gopen(path, "rb")
    f = cast(io.BufferedReader, open(path, "rb", buffering=1 << 16))  # typeshed: BinaryIO for a non-literal size
    if f.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f)  # type: ignore[return-value]
    return f


def split_name(name: str) -> tuple[str | None, str | None]:
    """'dir/abc.seg.png' -> ('dir/abc', 'seg.png'): the key is everything before the first dot of the
    last path component (the webdataset convention); names without a dot or of the __meta__ form
    give (None, None)."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash or name.startswith("__", slash):
        return None, None
    return name[:dot], name[dot + 1 :].lower()


def iter_shard(url: str, exts: frozenset[str] | None = None, offset: int = 0, stride: int = 1) -> Iterator[dict]:
    """Yield the samples of one tar shard as {'__key__', '__url__', ext: bytes}, grouped by key in
    tar order. Only members whose extension is in `exts` are read (all if None): nothing else is
    even loaded, so pickles in a shard are never touched. Only samples with index % stride ==
    offset are yielded (used to deal one shard's samples to several readers). A shard that cannot be
    opened or is damaged raises ShardError, one that ends early TruncatedShard; the sample being
    read at that point is dropped, the samples before it have been yielded."""
    try:
        stream = open_shard(url)
    except OSError as exn:
        raise ShardError(f"cannot open shard {url}: {exn}") from exn
    state: dict = {"key": None, "index": -1, "keep": False, "split": (None, None)}

    def want(name: str) -> bool:
        key, ext = state["split"] = split_name(name)
        if key is None:
            return False
        if key != state["key"]:
            state["key"], state["index"] = key, state["index"] + 1
            state["keep"] = state["index"] % stride == offset
        return state["keep"] and (exts is None or ext in exts)

    sample: dict | None = None
    try:
        with stream:
            for _, data in iter_members(stream, want, url):
                key, ext = state["split"]  # of the member just announced or read
                if key is None or not state["keep"]:
                    continue
                if data is None:  # a header: a new key means the previous sample is complete
                    if sample is None or sample["__key__"] != key:
                        if sample is not None:
                            yield sample
                        sample = {"__key__": key, "__url__": url}
                else:
                    assert sample is not None  # the member's header came first
                    if ext not in sample:
                        sample[ext] = data
    except ShardError:
        raise
    except EOFError as exn:  # a gzip stream cut short
        raise TruncatedShard(f"shard {url} ends early: {exn}") from exn
    except (OSError, ValueError, zlib.error) as exn:  # pipe errors, damaged compressed data
        raise ShardError(f"shard {url} cannot be read: {exn}") from exn
    if sample is not None:
        yield sample
