"""Data layer: WebDataset shards (write, check, read), built-in datasets, tokenizer, transforms.

    urls = get_builtin("shapes", "train")                  # made on first use, cached
    tokenizer = load_tokenizer("shapes", context_length=32)   # or "clip": OpenAI CLIP's BPE (open_clip_torch's file)
    loader = build_loader(urls, batch_size=256, tokenizer=tokenizer, image_size=64, train=True,
                          num_workers=4, resampled=True, samples_per_epoch=100_000)
    for batch in loader:  # {"image": B x 3 x H x W float, "text": B x 32 long, "caption", "key"[, "label"]}
        ...
    loader.skipped        # {"bad_image": 3, "truncated_shard": 1, ...} over all workers so far

Shards are untrusted: only images (JPEG/PNG/WEBP), UTF-8 text, JSON and integer labels are ever
decoded; other members (pickles included) are not even read. This package imports nothing else
of pretrain_mm.
"""

from .builtin import BUILTINS, builtin_dir, builtin_info, get_builtin, load_tokenizer, write_builtin
from .check import check_shards
from .decode import DEFAULT_CAPTION_KEY, DEFAULT_IMAGE_KEY
from .pipeline import Loader, build_loader
from .reader import ShardError, TruncatedShard, iter_shard
from .shards import ShardWriter, expand_urls, read_sizes, write_sizes
from .stages import SKIP_REASONS
from .tokenizer import (
    CLIP,
    TOKENIZER_FILE,
    Tokenizer,
    clip_tokenizer,
    find_tokenizer_file,
    train_tokenizer,
    train_tokenizer_on_shards,
)
from .transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, image_transform

__all__ = [
    "BUILTINS",
    "CLIP",
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_CAPTION_KEY",
    "DEFAULT_IMAGE_KEY",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SKIP_REASONS",
    "TOKENIZER_FILE",
    "Loader",
    "ShardError",
    "ShardWriter",
    "Tokenizer",
    "TruncatedShard",
    "build_loader",
    "builtin_dir",
    "builtin_info",
    "check_shards",
    "clip_tokenizer",
    "expand_urls",
    "find_tokenizer_file",
    "get_builtin",
    "image_transform",
    "iter_shard",
    "load_tokenizer",
    "read_sizes",
    "train_tokenizer",
    "train_tokenizer_on_shards",
    "write_builtin",
    "write_sizes",
]
