"""Typed configuration: the schema behind conf/ (a misspelt or mistyped key is an error).

Hydra merges conf/config.yaml and the chosen groups (exp/, model/, data/, optim/, trainer/)
into `Config`; every key below is documented where it is declared, and the README lists
the public ones.
"""

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SplitConfig:
    # Shards: a directory, a brace pattern ('/data/cc3m/{00000..00331}.tar') or a comma list.
    # None: the built-in dataset's split of that name (made on first use).
    urls: Optional[str] = None


@dataclass
class DataConfig:
    name: str = "shapes"                    # shapes | digits (built-in) | wds (your shards)
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    image_size: int = 64
    tokenizer: Optional[str] = None         # a tokenizer file or built-in name; None: the dataset's own
    context_length: int = 32
    image_key: str = "jpg;png;jpeg;webp"
    caption_key: str = "txt"
    label_key: Optional[str] = None
    num_workers: int = 2
    shuffle_buffer: int = 2000
    hflip: bool = True                      # random horizontal flips; off where captions say left/right
    root: Optional[str] = None              # cache of built-in data; None: $PRETRAIN_MM_DATA or ~/.cache


@dataclass
class ModelConfig:
    kind: str = "clip"                      # clip | mae
    size: str = "tiny"                      # a named size (pretrain_mm.models): tiny ... vit_l14
    patch_dropout: float = 0.0              # CLIP: FLIP-style share of patches dropped in training
    drop_path: float = 0.0
    mask_ratio: float = 0.75                # MAE
    norm_pix_loss: bool = True              # MAE: per-patch normalised targets


@dataclass
class LossConfig:
    kind: str = "softmax"                   # softmax (CLIP) | sigmoid (SigLIP)
    impl: str = "auto"                      # auto | fused | reference


@dataclass
class OptimConfig:
    lr: float = 1e-3                        # peak learning rate, for the global batch
    weight_decay: float = 0.1               # not applied to norms, biases, embeddings, logit scale/bias
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 50                  # linear warm-up, then cosine to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0                  # max global gradient norm; 0 disables


@dataclass
class TrainerConfig:
    max_steps: int = 300
    batch_size: int = 256                   # global; per rank = batch_size / world / grad_accum
    grad_accum: int = 1
    precision: str = "auto"                 # auto (bf16 where fast) | bf16 | fp32
    checkpoint_every: int = 100             # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 2
    resume: str = "auto"                    # auto: newest complete checkpoint in the run dir | never | a path
    seed: int = 0
    log_every: int = 10
    activation_checkpointing: bool = False
    compile: bool = False
    device: str = "auto"                    # auto (cuda if available) | cpu | cuda


@dataclass
class Config:
    run_name: str = "${model.kind}-${data.name}"   # the default run directory is outputs/<run_name>
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)
