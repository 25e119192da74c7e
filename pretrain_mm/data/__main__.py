"""Command line: `python -m pretrain_mm.data write SOURCE OUT`, `check SHARDS` and `tokenizer SHARDS OUT`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .decode import DEFAULT_CAPTION_KEY, DEFAULT_IMAGE_KEY

EPILOG = """examples:
  python -m pretrain_mm.data write photos/ shards/            # captions in photos/**/NAME.txt
  python -m pretrain_mm.data write captions.csv shards/ --caption-col text --label-col class
  python -m pretrain_mm.data write builtin:shapes data/shapes --num-train 20000
  python -m pretrain_mm.data check 'shards/{00000..00009}.tar'
  python -m pretrain_mm.data tokenizer shards/ shards/ --vocab-size 16384   # -> shards/tokenizer.json
Training on shards that carry no tokenizer.json uses OpenAI CLIP's BPE (data.tokenizer=clip).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain_mm.data",
        description="Write and check WebDataset shards; train a tokenizer on them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    w = sub.add_parser("write", help="write shards from a folder, a table or a built-in dataset")
    w.add_argument(
        "source",
        help="a folder of images with NAME.txt captions, a .csv/.tsv/.parquet table "
        "(path, caption[, label]), or builtin:shapes / builtin:digits",
    )
    w.add_argument("out", help="output directory (shards NNNNN.tar + sizes.json; built-ins: train/ and val/)")
    w.add_argument("--shard-size", type=int, default=None, help="samples per shard (default 1000; built-ins 500)")
    w.add_argument("--root", help="directory the table's image paths are relative to (default: the table's)")
    w.add_argument("--path-col", default="path")
    w.add_argument("--caption-col", default="caption")
    w.add_argument("--label-col", default=None)
    w.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="train a BPE tokenizer of this size on the captions (0: none; default 8192, built-ins 1024)",
    )
    w.add_argument("--no-verify", action="store_true", help="do not decode images while writing")
    w.add_argument("--allow-missing-caption", action="store_true", help="keep images that have no caption")
    for name, kind in (
        ("num-train", int),
        ("num-val", int),
        ("image-size", int),
        ("seed", int),
        ("val-fraction", float),
    ):
        w.add_argument(f"--{name}", type=kind, default=None, help="built-in dataset parameter")

    c = sub.add_parser("check", help="read every sample of a shard set and report problems")
    c.add_argument("shards", nargs="+", help="directory, brace pattern, comma-separated list or files")
    c.add_argument("--image-key", default=DEFAULT_IMAGE_KEY)
    c.add_argument("--caption-key", default=DEFAULT_CAPTION_KEY, help="'' to not require captions")
    c.add_argument("--label-key", default=None, help="e.g. cls or json:label, to require labels")
    c.add_argument("--no-sizes", action="store_true", help="do not write sizes.json")
    c.add_argument("--workers", type=int, default=1, help="check shards in this many processes")
    c.add_argument("--json", action="store_true", help="print the totals as JSON after the table")

    t = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on the captions of shards")
    t.add_argument("shards", help="directory, brace pattern or comma-separated list of .tar shards")
    t.add_argument(
        "out", help="tokenizer file to write; a directory (or a name not ending in .json) gets tokenizer.json"
    )
    t.add_argument("--vocab-size", type=int, default=8192, help="ids, special tokens included (default 8192)")
    t.add_argument("--caption-key", default=DEFAULT_CAPTION_KEY, help="e.g. txt or json:caption (default txt)")
    t.add_argument("--min-frequency", type=int, default=2, help="least count of a pair to merge (default 2)")
    t.add_argument("--force", action="store_true", help="overwrite an existing tokenizer file")
    return parser


def _write(args: argparse.Namespace) -> int:
    if args.source.startswith("builtin:"):
        from .builtin import write_builtin

        params = {
            k: getattr(args, k)
            for k in ("num_train", "num_val", "image_size", "seed", "val_fraction")
            if getattr(args, k) is not None
        }
        write_builtin(
            args.source[len("builtin:") :],
            args.out,
            shard_size=args.shard_size or 500,
            vocab_size=1024 if args.vocab_size is None else args.vocab_size,
            **params,
        )
        print(f"wrote {args.source} to {args.out}")
        return 0
    from .ingest import write_dataset

    summary = write_dataset(
        args.source,
        args.out,
        shard_size=args.shard_size or 1000,
        root=args.root,
        path_col=args.path_col,
        caption_col=args.caption_col,
        label_col=args.label_col,
        vocab_size=8192 if args.vocab_size is None else args.vocab_size,
        verify=not args.no_verify,
        require_caption=not args.allow_missing_caption,
    )
    print(
        f"wrote {summary['written']} samples in {summary['shards']} shards to {summary['out_dir']}"
        + (f"; left out: {summary['skipped']}" if summary["skipped"] else "")
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from .check import check_shards

    shards = args.shards[0] if len(args.shards) == 1 else args.shards
    report = check_shards(
        shards,
        image_key=args.image_key,
        caption_key=args.caption_key or None,
        label_key=args.label_key,
        write_sizes_json=not args.no_sizes,
        workers=args.workers,
    )
    print(report.format())
    if args.json:
        print(json.dumps(report.totals(), sort_keys=True))
    return 1 if report.bad else 0


def _tokenizer(args: argparse.Namespace) -> int:
    from .tokenizer import TOKENIZER_FILE, train_tokenizer_on_shards

    out = os.path.expanduser(args.out)
    if os.path.isdir(out) or not (os.path.isfile(out) or out.endswith(".json")):
        out = os.path.join(out, TOKENIZER_FILE)
    if os.path.exists(out) and not args.force:
        raise ValueError(f"{out} exists; pass --force to overwrite it")
    if os.path.isdir(out):
        raise ValueError(f"{out} is a directory, not a tokenizer file")
    tokenizer, counts = train_tokenizer_on_shards(
        args.shards, args.vocab_size, caption_key=args.caption_key, min_frequency=args.min_frequency
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tokenizer.save(out)
    skipped = [f"{counts[k]} {k.replace('_', ' ')}" for k in ("no_caption", "bad_shards") if counts[k]]
    print(
        f"wrote {out}: {tokenizer.vocab_size} ids, trained on {counts['captions']} captions in "
        f"{counts['shards']} shards" + (f"; skipped: {', '.join(skipped)}" if skipped else "")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"write": _write, "check": _check, "tokenizer": _tokenizer}[args.command]
    try:
        return command(args)
    except ValueError as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 1 if args.command == "tokenizer" else 2


if __name__ == "__main__":
    sys.exit(main())
