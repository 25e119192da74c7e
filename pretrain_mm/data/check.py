"""The shard checker: read every sample, count undecodable images, missing captions, damaged shards."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from .decode import (
    DEFAULT_CAPTION_KEY,
    DEFAULT_IMAGE_KEY,
    SkipSample,
    decode_image,
    get_caption,
    get_image_bytes,
    get_label,
    parse_key_spec,
    spec_exts,
)
from .reader import ShardError, TruncatedShard, iter_shard
from .shards import expand_urls, is_remote, write_sizes

PROBLEMS = ("no_image", "bad_image", "no_caption", "no_label")


@dataclass
class ShardReport:
    """What one shard holds: `samples` read completely, `ok` of them usable, the keys of the bad
    ones per problem, and the shard's status: ok, truncated, unreadable or empty."""

    url: str
    samples: int = 0
    ok: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: {p: [] for p in PROBLEMS})
    status: str = "ok"
    error: str = ""

    @property
    def bad(self) -> bool:
        return self.status != "ok" or self.ok != self.samples


@dataclass
class CheckReport:
    shards: list[ShardReport]
    sizes_files: list[str] = field(default_factory=list)

    @property
    def bad(self) -> bool:
        return any(s.bad for s in self.shards)

    def totals(self) -> dict[str, int]:
        out = {
            "shards": len(self.shards),
            "samples": sum(s.samples for s in self.shards),
            "ok": sum(s.ok for s in self.shards),
        }
        out.update({p: sum(len(s.problems[p]) for s in self.shards) for p in PROBLEMS})
        for status in ("truncated", "unreadable", "empty"):
            out[f"{status}_shards"] = sum(s.status == status for s in self.shards)
        return out

    def format(self, max_listed: int = 20) -> str:
        cols = ("samples", "ok") + PROBLEMS
        width = max([len(s.url) for s in self.shards] + [12])
        lines = [f"{'shard':{width}s} " + " ".join(f"{c:>10s}" for c in cols) + "  status"]
        for s in self.shards:
            values = [s.samples, s.ok] + [len(s.problems[p]) for p in PROBLEMS]
            lines.append(f"{s.url:{width}s} " + " ".join(f"{v:10d}" for v in values) + f"  {s.status}")
        t = self.totals()
        lines.append(
            f"{'total (%d shards)' % t['shards']:{width}s} "
            + " ".join(f"{t[c]:10d}" for c in cols)
            + f"  {t['truncated_shards']} truncated, {t['unreadable_shards']} unreadable, "
            f"{t['empty_shards']} empty"
        )
        listed = [f"  {s.url}: {p}: {key}" for s in self.shards for p in PROBLEMS for key in s.problems[p]]
        listed += [f"  {s.url}: {s.status}: {s.error}" for s in self.shards if s.status != "ok"]
        if listed:
            lines.append(f"problems ({len(listed)}{', first %d' % max_listed if len(listed) > max_listed else ''}):")
            lines += listed[:max_listed]
        lines += [f"wrote {path}" for path in self.sizes_files]
        lines.append("BAD: some samples or shards are unusable" if self.bad else "OK: every sample is usable")
        return "\n".join(lines)


def check_shard(
    url: str,
    image_key: str = DEFAULT_IMAGE_KEY,
    caption_key: str | None = DEFAULT_CAPTION_KEY,
    label_key: str | None = None,
) -> ShardReport:
    """Read every sample of one shard and test its image (full decode), caption and label."""
    image_spec = parse_key_spec(image_key, "image")
    caption_spec = parse_key_spec(caption_key, "caption")
    label_spec = parse_key_spec(label_key, "label")
    report = ShardReport(url)
    try:
        for sample in iter_shard(url, spec_exts(image_spec, caption_spec, label_spec)):
            report.samples += 1
            key, found = sample["__key__"], []
            cache: dict = {}
            try:
                decode_image(get_image_bytes(sample, image_spec))
            except SkipSample:
                found.append("no_image")
            except Exception:  # whatever Pillow raises for bad bytes
                found.append("bad_image")
            for problem, spec, getter in (
                ("no_caption", caption_spec, get_caption),
                ("no_label", label_spec, get_label),
            ):
                try:
                    if spec:
                        getter(sample, spec, cache)
                except SkipSample:
                    found.append(problem)
            for problem in found:
                report.problems[problem].append(key)
            report.ok += not found
    except ShardError as exn:
        report.status = "truncated" if isinstance(exn, TruncatedShard) else "unreadable"
        report.error = str(exn)
    if report.status == "ok" and report.samples == 0:
        report.status, report.error = "empty", "no samples"
    return report


def check_shards(
    urls: str | Sequence[str],
    *,
    image_key: str = DEFAULT_IMAGE_KEY,
    caption_key: str | None = DEFAULT_CAPTION_KEY,
    label_key: str | None = None,
    write_sizes_json: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> CheckReport:
    """Check a shard set (directory, pattern or list). Writes sizes.json (complete samples per shard)
    beside local shards unless told not to. `workers` > 1 checks shards in parallel processes."""
    from tqdm import tqdm

    urls = expand_urls(urls)
    for spec, role in ((image_key, "image"), (caption_key, "caption"), (label_key, "label")):
        parse_key_spec(spec, role)  # fail early, in this process, on a bad key
    fn = functools.partial(check_shard, image_key=image_key, caption_key=caption_key, label_key=label_key)
    bar = tqdm(total=len(urls), desc="checking shards", unit="shard", disable=not progress, mininterval=0.5)
    shards: list[ShardReport] = []
    if workers > 1 and len(urls) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(urls))) as pool:
            for rep in pool.map(fn, urls):
                shards.append(rep)
                bar.update()
    else:
        for url in urls:
            shards.append(fn(url))
            bar.update()
    bar.close()
    report = CheckReport(shards)
    if write_sizes_json:
        by_dir: dict[str, dict[str, int]] = {}
        for rep in shards:
            if not is_remote(rep.url) and os.path.isfile(rep.url):
                by_dir.setdefault(os.path.dirname(os.path.abspath(rep.url)), {})[os.path.basename(rep.url)] = (
                    rep.samples
                )
        report.sizes_files = [write_sizes(d, counts) for d, counts in sorted(by_dir.items())]
    return report
