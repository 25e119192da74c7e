"""`python -m pretrain_mm.caption RUN_OR_CHECKPOINT IMAGES...`: a caption per image from a trained CoCa.

RUN_OR_CHECKPOINT: a CoCa run directory (its model.safetensors), a .safetensors file, or a checkpoint
directory (trusted runs only: DCP metadata is a pickle). IMAGES: image files (JPEG, PNG, WEBP), folders of
them, or WebDataset shards (a .tar, a brace pattern '/data/x/{00000..00009}.tar', or a folder of .tar files).
Prints `name<TAB>caption` per image, in the order given (a folder's files sorted by name, a shard's samples
in their order). An image that cannot be decoded is skipped with a warning naming it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from pretrain_mm.cli_errors import one_line_error
from pretrain_mm.config import CaptionConfig
from pretrain_mm.data import DEFAULT_IMAGE_KEY

IMAGE_SUFFIXES = tuple(f".{ext}" for ext in DEFAULT_IMAGE_KEY.split(";"))  # what a shard's image may be
log = logging.getLogger("pretrain_mm.caption")


def image_sources(items: list[str]) -> Iterator[tuple[str, str | None, bytes | None]]:
    """(name, shard URL or None, image bytes or None) for every image the arguments name; bytes are None for
    a path still to read. A name that is neither an image, a folder nor shards is a ValueError."""
    from pretrain_mm.data import expand_urls, iter_shard

    exts = DEFAULT_IMAGE_KEY.split(";")
    for item in items:
        path = Path(item).expanduser()
        tars = sorted(path.glob("*.tar")) if path.is_dir() else []
        if "{" in item or path.suffix == ".tar" or tars:
            for url in expand_urls(",".join(map(str, tars)) if tars else item):
                if not os.path.isfile(url):
                    raise ValueError(f"shard {url} does not exist")
                for sample in iter_shard(url, frozenset(exts)):
                    data = next((sample[e] for e in exts if e in sample), None)
                    yield sample["__key__"], url, data
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"{item} holds no image files ({', '.join(IMAGE_SUFFIXES)}) and no .tar shards")
            yield from ((str(p), None, None) for p in files)
        elif path.is_file():
            yield str(path), None, None
        else:
            raise ValueError(f"{item} does not exist: give image files, folders of them, or WebDataset shards")


def caption_images(
    source: str, items: list[str], caption_cfg: CaptionConfig, batch_size: int, device: torch.device, prompt: str = ""
):
    """Yields (name, caption) for each image of `items` (see image_sources) from the CoCa of `source`, decoded
    as caption_cfg says; every caption starts with `prompt` (if any)."""
    from pretrain_mm.builders import build_tokenizer
    from pretrain_mm.data import image_transform
    from pretrain_mm.data.decode import decode_image
    from pretrain_mm.eval.captioning import captioner
    from pretrain_mm.eval.loading import load_checkpoint_model
    from pretrain_mm.models import CoCa

    model, cfg, read = load_checkpoint_model(source, device)
    if not isinstance(model, CoCa):
        raise ValueError(f"{read} holds a {type(model).__name__}, which cannot caption: train one with model=coca")
    caption = captioner(model, build_tokenizer(cfg.data), caption_cfg, device, prompt)
    transform = image_transform(cfg.data.image_size)
    names: list[str] = []
    pixels: list[torch.Tensor] = []

    def flush():
        done = list(zip(names, caption(torch.stack(pixels))))
        names.clear()
        pixels.clear()
        return done

    for name, url, data in image_sources(items):
        try:
            if data is None and url is None:
                data = Path(name).read_bytes()
            if data is None:
                raise ValueError("the sample has no image")
            pixels.append(transform(decode_image(data)))
            names.append(name)
        except Exception as error:  # a damaged image: skipped, named
            log.warning("skipped %s%s: %s", name, f" in {url}" if url else "", error)
            continue
        if len(pixels) == batch_size:
            yield from flush()
    if pixels:
        yield from flush()


def main(argv: list[str] | None = None) -> int:
    from pretrain_mm.config import DecodingMethod

    parser = argparse.ArgumentParser(
        prog="python -m pretrain_mm.caption",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = CaptionConfig()  # eval.caption's: the report's captions and these are made alike
    parser.add_argument("source", help="a CoCa run directory, a .safetensors file, or a checkpoint directory")
    parser.add_argument("images", nargs="+", help="image files, folders of them, or WebDataset shards")
    parser.add_argument("--method", choices=[str(m) for m in DecodingMethod], default=str(defaults.method))
    parser.add_argument("--beam-width", type=int, default=defaults.beam_width)
    parser.add_argument("--length-penalty", type=float, default=defaults.length_penalty)
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens, start and end included")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="top_p's samples")
    parser.add_argument("--prompt", default="", help="words every caption starts with, e.g. 'there is a'")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        settings = CaptionConfig(
            DecodingMethod(args.method),
            args.beam_width,
            args.length_penalty,
            args.top_p,
            args.temperature,
            args.max_length,
            args.seed,
        )
        for name, caption in caption_images(
            args.source, args.images, settings, args.batch_size, torch.device(args.device), args.prompt
        ):
            print(f"{name}\t{caption}", flush=True)
    except ValueError as error:
        return one_line_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
