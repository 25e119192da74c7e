"""From a config to the parts it names: shards, tokenizer, model and the training loader — one rule for
train, eval, export and the benchmarks."""

import logging
import os
from typing import cast

import torch.nn as nn
from omegaconf import DictConfig

from pretrain_mm.config import (
    TEXT_KINDS,
    TOKENIZED_KINDS,
    ClipModelConfig,
    Config,
    DataConfig,
    MaeModelConfig,
    ModelKind,
    masks_text,
)
from pretrain_mm.data import (
    BUILTINS,
    CLIP,
    Loader,
    Tokenizer,
    build_loader,
    expand_urls,
    find_tokenizer_file,
    get_builtin,
    load_tokenizer,
)
from pretrain_mm.distributed import DistInfo
from pretrain_mm.models.mlm import MaskingRule

log = logging.getLogger(__name__)
_said_clip_default = False  # the fall-back to CLIP's BPE is logged once per process


def builtin_mixture(data_cfg: DataConfig) -> list[tuple[str, int]]:
    """(name, weight) of the built-in datasets data.name names: 'shapes', or a mixture
    'shapes+digits*3' whose training draws digits' shards 3 times as often; [] for shards."""
    out = []
    for part in data_cfg.name.split("+"):
        name, star, weight = part.partition("*")
        if name not in BUILTINS:
            return []
        if star and not (weight.isdigit() and int(weight) >= 1):
            raise ValueError(f"data.name={data_cfg.name}: the weight after '{name}*' must be a whole number >= 1")
        out.append((name, int(weight) if star else 1))
    return out


def builtin_names(data_cfg: DataConfig) -> list[str]:
    """The built-in datasets named by data.name, in order; [] for shards."""
    return [name for name, _ in builtin_mixture(data_cfg)]


def split_urls(data_cfg: DataConfig, split: str) -> str | list[str]:
    """The shards of a split: the configured pattern, else the built-in datasets' (all of a mixture's)."""
    urls = getattr(data_cfg, split).urls
    if urls:
        return urls
    mixture = builtin_mixture(data_cfg)
    if not mixture:
        raise ValueError(
            f"data={data_cfg.name} needs shards: set data.{split}.urls to a directory, a brace pattern "
            f"('/data/cc3m/{{00000..00331}}.tar') or a comma-separated list (built-in sets: "
            f"{', '.join(BUILTINS)}, or a mixture such as shapes+digits)"
        )
    # A weight repeats the set's training shards: the trainer draws shards with replacement.
    return [
        url
        for name, weight in mixture
        for url in get_builtin(name, split, root=data_cfg.root) * (weight if split == "train" else 1)
    ]


def build_tokenizer(data_cfg: DataConfig) -> Tokenizer:
    """The configured tokenizer, else the (first) built-in dataset's own; for shards, a
    tokenizer.json beside them or in their parent (as `python -m pretrain_mm.data write` saves
    it), else OpenAI CLIP's BPE (data.tokenizer=clip)."""
    global _said_clip_default
    names = builtin_names(data_cfg)
    source = data_cfg.tokenizer or (names[0] if names else None)
    if source is None:
        shard_dir = os.path.dirname(expand_urls(split_urls(data_cfg, "train"))[0])
        source = find_tokenizer_file(shard_dir) or CLIP
        if source == CLIP and not _said_clip_default:
            _said_clip_default = True
            log.info(
                "no tokenizer.json beside the shards in %s (nor in its parent): using OpenAI CLIP's BPE "
                "(data.tokenizer=clip, 49408 ids); set data.tokenizer to use another",
                shard_dir or ".",
            )
    return load_tokenizer(source, context_length=data_cfg.context_length, root=data_cfg.root)


# CLIP arguments whose defaults changed (session 6: open_clip's image tower) and what a run's
# config.yaml that does not name them was trained with. The trainer writes the current defaults
# into every config.yaml (pin_model_args), so a later change of default cannot rebuild an old run
# into another architecture.
LEGACY_CLIP_ARGS = {"vision_norm_pre": False, "vision_init": "timm"}


def pin_model_args(resolved: dict, legacy: bool = False) -> dict:
    """A resolved config (a dict) with model.args naming every argument in LEGACY_CLIP_ARGS: the
    model's current default, or with legacy=True (reading an older run's config.yaml) the old one."""
    import inspect

    from pretrain_mm.models import CLIP

    model = resolved.get("model") or {}
    if model.get("kind") in TEXT_KINDS:  # CoCa takes CLIP's arguments
        params = inspect.signature(CLIP).parameters
        args = dict(model.get("args") or {})
        for name, old in LEGACY_CLIP_ARGS.items():
            args.setdefault(name, old if legacy else params[name].default)
        model["args"] = args
    return resolved


def model_vocab_size(cfg: Config, tokenizer: Tokenizer) -> int:
    """The token embedding's rows: the tokenizer's ids, and one more, the mask id, where the model learns
    masked language modelling (models/mlm.py says why the mask id is the tokenizer's vocab_size)."""
    return tokenizer.vocab_size + (1 if masks_text(cfg) else 0)


def masking_rule(cfg: Config, tokenizer: Tokenizer) -> MaskingRule:
    """BERT's masking of the tokenizer's captions at loss.mlm_mask_rate, the mask id after the tokenizer's."""
    return MaskingRule(
        rate=cfg.loss.mlm_mask_rate,
        mask_id=tokenizer.vocab_size,
        vocab_size=tokenizer.vocab_size,
        pad_id=tokenizer.pad_id,
        sot_id=tokenizer.sot_id,
        eot_id=tokenizer.eot_id,
    )


def model_from_config(cfg: Config, vocab_size: int | None = None, **overrides) -> nn.Module:
    """A new, initialised model of the config's kind, size and input shapes. A text model's vocabulary is
    model_vocab_size of the configured tokenizer unless `vocab_size` is given (a caller that holds the
    tokenizer, or the weights)."""
    from pretrain_mm.models import build_model

    if cfg.model.kind in TOKENIZED_KINDS and vocab_size is None:
        vocab_size = model_vocab_size(cfg, build_tokenizer(cfg.data))
    model_cfg = cfg.model  # at run time a DictConfig of the kind's schema
    clip_cfg, mae_cfg = cast(ClipModelConfig, model_cfg), cast(MaeModelConfig, model_cfg)
    extra: dict = {}
    if model_cfg.kind in TEXT_KINDS:
        extra = {"patch_dropout": clip_cfg.patch_dropout, "loss_kind": str(cfg.loss.kind)}
        if masks_text(cfg):
            extra["mlm"] = True
        if cfg.loss.word_weight > 0:
            extra["word_head"] = True
    elif model_cfg.kind == ModelKind.mae:
        extra = {"mask_ratio": mae_cfg.mask_ratio, "norm_pix_loss": mae_cfg.norm_pix_loss}
    args = cast(DictConfig, model_cfg).get("args")  # `get`: a config without model.args is accepted
    extra.update(drop_path_rate=model_cfg.drop_path, **dict(args or {}), **overrides)
    return build_model(
        str(model_cfg.kind),
        model_cfg.size,
        image_size=cfg.data.image_size,
        vocab_size=vocab_size or None,
        context_length=cfg.data.context_length,
        **extra,
    )


def build_train_loader(cfg: Config, info: DistInfo, per_rank_batch: int, tokenizer: Tokenizer | None = None) -> Loader:
    """The training loader: the built-in datasets or the user's shards, split over ranks, as uint8 images
    (the trainer normalises one micro-batch at a time, `loader.normalize`); CLIP captions tokenised by
    `tokenizer` (default: the configured one).

    Shards are drawn with replacement, so an "epoch" of the stream is only the unit its workers are
    started and seeded for. It lasts `trainer.checkpoint_every` steps: the workers live from one
    checkpoint to the next (on a small set, an epoch of its own size restarted them every few steps,
    3% of the step time on 2 cores). An epoch is dealt to the workers in whole rounds, so when
    checkpoint_every is a multiple of data.num_workers a scheduled checkpoint falls on an epoch's end
    and resuming from it replays nothing; otherwise, and from a checkpoint written on a stop signal,
    a run resumes mid-epoch (exactly, by replaying the epoch's raw samples undecoded).
    """
    data, trainer = cfg.data, cfg.trainer
    if cfg.model.kind in TOKENIZED_KINDS and tokenizer is None:
        tokenizer = build_tokenizer(data)
    return build_loader(
        split_urls(data, "train"),
        batch_size=per_rank_batch,
        tokenizer=tokenizer if cfg.model.kind in TOKENIZED_KINDS else None,
        image_size=data.image_size,
        train=True,
        num_workers=data.num_workers,
        seed=trainer.seed,
        resampled=True,
        samples_per_epoch=trainer.checkpoint_every * per_rank_batch * info.world_size,
        rank=info.rank,
        world_size=info.world_size,
        image_key=data.image_key,
        caption_key=data.caption_key,
        label_key=data.label_key,
        shuffle_buffer=data.shuffle_buffer,
        hflip=data.hflip,
        drop_last=True,
        normalize=False,
        hard_negatives=data.hard_negatives,
    )
