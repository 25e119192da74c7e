"""Loader throughput (samples/s) against a plain open-the-tars-and-decode loop, side by side.

    python benchmarks/bench_loader.py [--workers 2] [--batch-size 128] [--image-size 64] [--rounds 3]
    python benchmarks/bench_loader.py --source-px 256 --num 2000 --image-size 224   # larger images

Uses the built-in `shapes` train shards (made on first use) unless --shards is given. Each round runs
every method once, alternating, so machine noise hits them alike; the table shows the best and the
median round of each and their ratio to the plain floor (tarfile + PIL decode, same workers).
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import resource
import statistics
import sys
import tarfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset, get_worker_info  # noqa: E402

from pretrain_mm.data import build_loader, expand_urls, get_builtin, load_tokenizer  # noqa: E402
from pretrain_mm.data.reader import iter_shard  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


class DecodeFloor(IterableDataset):
    """Each worker takes every n-th shard, opens it and decodes every image; yields a count per shard."""

    def __init__(self, urls: list[str], project_reader: bool):
        self.urls, self.project_reader = urls, project_reader

    def __iter__(self):
        info = get_worker_info()
        mine = self.urls[info.id :: info.num_workers] if info else self.urls
        for url in mine:
            n = 0
            if self.project_reader:
                for sample in iter_shard(url, frozenset(e[1:] for e in IMAGE_EXTS)):
                    for ext in IMAGE_EXTS:
                        if ext[1:] in sample:
                            Image.open(io.BytesIO(sample[ext[1:]])).convert("RGB")
                            n += 1
                            break
            else:
                with tarfile.open(url, "r|*") as tf:
                    for member in tf:
                        if member.isreg() and member.name.lower().endswith(IMAGE_EXTS):
                            Image.open(io.BytesIO(tf.extractfile(member).read())).convert("RGB")
                            n += 1
            yield n


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(iterable, count):
    cpu, start = cpu_seconds(), time.perf_counter()
    n = sum(count(item) for item in iterable)
    wall = time.perf_counter() - start
    del iterable  # the DataLoader joins its workers, so their CPU time is counted
    return n, wall, cpu_seconds() - cpu


def run_floor(urls, workers, project_reader, args, tokenizer, epoch):
    loader = DataLoader(DecodeFloor(urls, project_reader), batch_size=None, num_workers=workers)
    return timed(loader, lambda n: n)


def run_loader(urls, workers, args, tokenizer, epoch):
    loader = build_loader(
        urls,
        batch_size=args.batch_size,
        tokenizer=tokenizer,
        image_size=args.image_size,
        train=True,
        num_workers=workers,
        seed=0,
    )
    loader.set_epoch(epoch)
    return timed(loader, lambda batch: batch["image"].shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", help="shard set (default: built-in shapes train)")
    parser.add_argument(
        "--source-px",
        type=int,
        default=64,
        help="without --shards: side of the generated shapes images (64 is the default dataset)",
    )
    parser.add_argument("--num", type=int, default=10_000, help="without --shards: number of shapes images")
    parser.add_argument("--tokenizer", default="shapes", help="tokenizer name or path ('' for image-only)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    if args.shards:
        urls = expand_urls(args.shards)
    else:
        params = (
            {} if (args.source_px, args.num) == (64, 10_000) else {"image_size": args.source_px, "num_train": args.num}
        )
        urls = get_builtin("shapes", "train", **params)
    tokenizer = load_tokenizer(args.tokenizer, context_length=32) if args.tokenizer else None
    methods = {
        "floor: tarfile + PIL decode": functools.partial(run_floor, project_reader=False),
        "floor: project tar reader + PIL decode": functools.partial(run_floor, project_reader=True),
        "build_loader (train: crop, flip, normalise, tokenise, batch)": run_loader,
    }
    rates: dict[str, list[float]] = {name: [] for name in methods}
    cpu_us: dict[str, list[float]] = {name: [] for name in methods}
    counts: dict[str, int] = {}
    for r in range(args.rounds):
        for name, fn in methods.items():
            n, wall, cpu = fn(urls, args.workers, args=args, tokenizer=tokenizer, epoch=r)
            counts[name] = n
            rates[name].append(n / wall)
            cpu_us[name].append(cpu / n * 1e6)
    plain = next(iter(methods))
    best0, med0, cpu0 = max(rates[plain]), statistics.median(rates[plain]), min(cpu_us[plain])
    print(
        f"\n{len(urls)} shards, {counts[plain]} samples, {args.workers} workers, batch {args.batch_size}, "
        f"output {args.image_size}px, {args.rounds} rounds, torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    header = ("samples", "best/s", "median/s", "ratio best", "ratio median", "CPU us/smp", "ratio CPU")
    print(f"{'method':62s}" + "".join(f"{h:>13s}" for h in header))
    for name in methods:
        best, med, cpu = max(rates[name]), statistics.median(rates[name]), min(cpu_us[name])
        row = (
            counts[name],
            f"{best:.0f}",
            f"{med:.0f}",
            f"{best / best0:.2f}",
            f"{med / med0:.2f}",
            f"{cpu:.0f}",
            f"{cpu0 / cpu:.2f}",
        )
        print(f"{name:62s}" + "".join(f"{v:>13}" for v in row))
    print(
        "ratio = samples/s relative to the plain floor (first row); ratio CPU = floor's CPU time per sample\n"
        "over the method's (main process + workers, best round). Target for build_loader: >= 0.80."
    )


if __name__ == "__main__":
    main()
