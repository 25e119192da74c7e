"""The training data of a config: built-in datasets or the user's shards, split over ranks."""

import os

from pretrain_mm.data import BUILTINS, build_loader, expand_urls, get_builtin, load_tokenizer


def builtin_names(data_cfg) -> list[str]:
    """The built-in datasets named by data.name ('shapes', or a mixture 'shapes+digits'); [] for shards."""
    names = data_cfg.name.split("+")
    return names if all(n in BUILTINS for n in names) else []


def split_urls(data_cfg, split: str):
    """The shards of a split: the configured pattern, else the built-in datasets' (all of a mixture's)."""
    urls = getattr(data_cfg, split).urls
    if urls:
        return urls
    names = builtin_names(data_cfg)
    if not names:
        raise ValueError(f"data={data_cfg.name} needs shards: set data.{split}.urls to a directory, a brace pattern "
                         f"('/data/cc3m/{{00000..00331}}.tar') or a comma-separated list (built-in sets: "
                         f"{', '.join(BUILTINS)}, or a mixture such as shapes+digits)")
    return [url for name in names for url in get_builtin(name, split, root=data_cfg.root)]


def build_tokenizer(data_cfg):
    """The configured tokenizer, else the (first) built-in dataset's own; for shards, a
    tokenizer.json beside them (as `python -m pretrain_mm.data write` saves it)."""
    names = builtin_names(data_cfg)
    source = data_cfg.tokenizer or (names[0] if names else None)
    if source is None:
        source = os.path.dirname(expand_urls(split_urls(data_cfg, "train"))[0])
    return load_tokenizer(source, context_length=data_cfg.context_length)


def model_vocab(cfg) -> int:
    return build_tokenizer(cfg.data).vocab_size if cfg.model.kind == "clip" else 0


def build_train_loader(cfg, info, per_rank_batch: int):
    d = cfg.data
    return build_loader(
        split_urls(d, "train"), batch_size=per_rank_batch,
        tokenizer=build_tokenizer(d) if cfg.model.kind == "clip" else None,
        image_size=d.image_size, train=True, num_workers=d.num_workers, seed=cfg.trainer.seed, resampled=True,
        rank=info.rank, world_size=info.world_size, image_key=d.image_key, caption_key=d.caption_key,
        label_key=d.label_key, shuffle_buffer=d.shuffle_buffer, hflip=d.hflip, drop_last=True)
