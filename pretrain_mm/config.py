"""Typed configuration: the one place a key's default and meaning live (a misspelt key, a wrong type or
a choice outside its Enum is an error when Hydra composes the config).

Hydra merges conf/config.yaml, the model kind's schema (`model=clip`, `model=mae`: registered below)
and the chosen groups (exp/, data/, launcher/) into `Config`; those YAML files hold only what
differs from the defaults here. Every key is documented where it is declared; the README lists the
public ones.
"""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


# Choices. StrEnum members compare equal to their strings ("clip" == ModelKind.clip) and print as them; the
# members are named as their values because OmegaConf validates a value by member name.
class Mode(StrEnum):
    train = "train"  # train, then evaluate if eval.enabled
    eval = "eval"  # evaluate eval.checkpoint only


class ModelKind(StrEnum):
    clip = "clip"
    coca = "coca"  # CLIP + a captioning decoder
    mae = "mae"
    mlm = "mlm"  # the text tower alone, masked language modelling on captions


TEXT_KINDS = (ModelKind.clip, ModelKind.coca)  # image and text towers (zero-shot, retrieval)
TOKENIZED_KINDS = (*TEXT_KINDS, ModelKind.mlm)  # the kinds that read captions (a tokenizer, a vocabulary)


class DecodingMethod(StrEnum):
    greedy = "greedy"
    beam = "beam"
    top_p = "top_p"  # nucleus sampling


class LossKind(StrEnum):
    softmax = "softmax"  # CLIP's symmetric cross-entropy
    sigmoid = "sigmoid"  # SigLIP


class LossImpl(StrEnum):
    auto = "auto"  # fused where the extension is built, else reference
    fused = "fused"
    reference = "reference"


class PrecisionChoice(StrEnum):
    auto = "auto"  # bf16 only where native (pretrain_mm/precision.py)
    bf16 = "bf16"
    fp32 = "fp32"


class DeviceChoice(StrEnum):
    auto = "auto"  # cuda if available
    cpu = "cpu"
    cuda = "cuda"


class LauncherName(StrEnum):
    local = "local"  # run here (torchrun / srun work too)
    slurm = "slurm"  # submit with submitit


@dataclass
class SplitConfig:
    # Shards: a directory, a brace pattern ('/data/cc3m/{00000..00331}.tar') or a comma list.
    # None: the built-in dataset's split of that name (made on first use).
    urls: str | None = None


@dataclass
class DataConfig:
    name: str = "shapes"  # shapes | digits (built-in) | wds (your shards)
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    image_size: int = 64
    tokenizer: str | None = None  # a tokenizer file, a built-in name or clip; None: the dataset's own
    # (shards without tokenizer.json: clip, OpenAI CLIP's BPE)
    context_length: int = 32
    image_key: str = "jpg;png;jpeg;webp"
    caption_key: str = "txt"
    label_key: str | None = None
    num_workers: int = 2
    shuffle_buffer: int = 2000
    hflip: bool = True  # random horizontal flips; off where captions say left/right
    # Word groups for hard-negative captions (data/negatives.py): [[circle, square, triangle]] swaps a
    # caption's shape word for another shape; the loss then asks each image to prefer its own caption.
    hard_negatives: list[list[str]] = field(default_factory=list)
    root: str | None = None  # cache of built-in data; None: $PRETRAIN_MM_DATA or ~/.cache


@dataclass
class ModelConfig:
    """What every model kind has; `model=clip` (the default) or `model=mae` picks the kind's schema below."""

    kind: ModelKind = MISSING
    size: str = "tiny"  # a named size (pretrain_mm.models): tiny ... vit_l14
    drop_path: float = 0.0
    # CLIP / CoCa: start the text tower from a finished run's (+exp=mlm's masked-language-modelling one, or a
    # CLIP's): its directory or model.safetensors, with this run's tokenizer and text shape. Resuming ignores it.
    text_init_from: str | None = None
    # Any other constructor argument of CLIP / MAE by name, over the size's row:
    # +model.args.patch_size=16 +model.args.vision_init=timm (an unknown name is an error).
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClipModelConfig(ModelConfig):
    """CLIP: ViT image tower + causal text transformer."""

    kind: ModelKind = ModelKind.clip
    patch_dropout: float = 0.0  # FLIP-style share of patches dropped in training
    # CLIP from open_clip weights (interop/init_from.py): a .safetensors / open_clip trainer .pt file or an
    # open_clip local-dir; the architecture comes from its config (init_from_config: a JSON file or an open_clip
    # model name; None: the open_clip_config.json beside the weights). Resuming a run ignores it.
    init_from: str | None = None
    init_from_config: str | None = None


@dataclass
class CocaModelConfig(ModelConfig):
    """CoCa: CLIP's towers + a multimodal text decoder (models/coca.py); its size row names the decoder's
    caption_depth / caption_heads, model.args.caption_pool_queries=n attends through n pooled tokens."""

    kind: ModelKind = ModelKind.coca
    patch_dropout: float = 0.0  # FLIP-style share of patches dropped in training (both losses see the rest)


@dataclass
class MlmModelConfig(ModelConfig):
    """The text tower alone (models/mlm.py), trained by masked language modelling on the captions of the
    data (loss.mlm_mask_rate); the size row's text_* shape."""

    kind: ModelKind = ModelKind.mlm


@dataclass
class MaeModelConfig(ModelConfig):
    """ViT-MAE: encoder on the visible patches, light decoder, loss on the masked ones."""

    kind: ModelKind = ModelKind.mae
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True  # per-patch normalised targets


@dataclass
class LossConfig:
    kind: LossKind = LossKind.softmax
    impl: LossImpl = LossImpl.auto
    hard_negative_weight: float = 1.0  # with data.hard_negatives: weight of the image-prefers-its-caption term
    # CoCa: loss = contrastive + caption_weight * next-token cross-entropy (the mean over the global batch's
    # caption tokens, end-of-text included, padding not); 2.0 as open_clip's CoCa.
    caption_weight: float = 2.0
    caption_label_smoothing: float = 0.0
    # CLIP / CoCa: + mlm_weight * masked-language-modelling loss of the text tower (FLAVA); 0: no MLM head.
    # The mlm kind trains on that loss alone. BERT's 15% of caption tokens, 80/10/10 mask/random/kept.
    mlm_weight: float = 0.0
    mlm_mask_rate: float = 0.15
    # CLIP / CoCa: + word_weight * the cross-entropy of a linear head on the image features with the caption's
    # words (SuperClass; models/words.py); 0: no word head.
    word_weight: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate, for the global batch
    weight_decay: float = 0.1  # not applied to norms, biases, embeddings, logit scale/bias
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 50  # linear warm-up, then cosine to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables


@dataclass
class TrainerConfig:
    max_steps: int = 300
    batch_size: int = 256  # global: the contrastive loss's N, whatever the split below
    grad_accum: int = 1  # micro-batches per rank and step (CLIP: GradCache, the whole batch's loss)
    micro_batch_size: int | None = None  # per rank; the friendlier knob: grad_accum = batch_size / world / this
    precision: PrecisionChoice = PrecisionChoice.auto
    checkpoint_every: int = 100  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto: newest complete checkpoint in the run dir | never | a path
    seed: int = 0
    log_every: int = 10
    activation_checkpointing: bool = False
    compile: bool = False
    device: DeviceChoice = DeviceChoice.auto


@dataclass
class ProbeConfig:
    """Linear probe on frozen, cached features: BatchNorm without affine, then a linear layer (MAE's recipe)."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-2  # AdamW peak, cosine to 0 after a linear warm-up
    weight_decay: float = 0.0
    warmup_epochs: int = 5


@dataclass
class FinetuneConfig:
    """The whole encoder and a new linear head, trained on the classification set's train split."""

    enabled: bool = False  # costs whole-encoder training: off unless asked for
    epochs: int = 10
    batch_size: int = 64  # global; per rank = batch_size / world size
    lr: float = 1e-3  # AdamW peak for the head; layer i gets lr * layer_decay^(depth+1-i)
    layer_decay: float = 0.75  # BEiT / MAE layer-wise learning-rate decay
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    drop_path: float = 0.1  # stochastic depth of the last block, rising linearly from 0
    warmup_epochs: int = 1
    hflip: bool = False  # random horizontal flips (wrong for digits and for left/right labels)


@dataclass
class WdsEvalConfig:
    """Your own labelled WebDataset (`.cls`, or `label` in `.json`) for probe / k-NN / fine-tune, and
    zero-shot when class names are given. Used when `eval.classification` names "wds"."""

    train_urls: str | None = None  # a directory, brace pattern or comma list, as data.train.urls
    test_urls: str | None = None
    label_key: str = "cls;json:label"
    classnames: str | None = None  # a text file, one class name per line (enables zero-shot)
    templates: str | None = None  # a text file, one prompt a line with {c} or {}; default "a photo of a {c}."


@dataclass
class CaptionConfig:
    """How captions are generated (models/generate.Decoding), by the report and `python -m pretrain_mm.caption`."""

    method: DecodingMethod = DecodingMethod.beam
    beam_width: int = 3
    length_penalty: float = 1.0  # a finished beam's score is log p / length ** length_penalty
    top_p: float = 0.9
    temperature: float = 1.0
    max_length: int = 32  # tokens, start and end of text included
    seed: int = 0  # top_p's samples


@dataclass
class EvalConfig:
    enabled: bool = True  # evaluate at the end of a finished training run
    checkpoint: str | None = None  # +exp=eval: a run directory or checkpoints/step_<N>
    output_dir: str | None = None  # where report/ goes; None: the run directory of the checkpoint
    batch_size: int = 128  # per rank, for feature extraction
    num_workers: int = 0  # loader workers per rank (the eval sets are small)
    max_samples: int = 5000  # cap per split over all ranks (each its share) to bound the time; 0: none
    seed: int = 0  # the random tower's initialisation, probe / fine-tune order
    random_baseline: bool = True  # the same evaluators on a freshly initialised tower, side by side
    # The encoders' precision: auto is bf16 where native (ample for ranking); fp32 scores as an fp32 evaluator
    # (CLIP_benchmark on a CPU) does, where bf16 rounding would reorder a barely trained model's near-ties.
    precision: PrecisionChoice = PrecisionChoice.auto
    # Zero-shot classification (CLIP): built-in sets, and for shapes the attributes to classify.
    zeroshot: list[str] = field(default_factory=lambda: ["shapes", "digits"])
    shapes_attributes: list[str] = field(default_factory=lambda: ["colour", "shape"])
    # Image <-> text retrieval (CLIP): built-in sets; shapes uses json:full_caption (every attribute named).
    retrieval: list[str] = field(default_factory=lambda: ["shapes"])
    retrieval_chunk_size: int = 1024  # rows of the similarity matrix computed at a time
    # Linear probe, k-NN (and fine-tune): built-in sets (train split -> val split) or "wds" (eval.wds).
    classification: list[str] = field(default_factory=lambda: ["digits"])
    wds: WdsEvalConfig = field(default_factory=WdsEvalConfig)
    # CLIP_benchmark webdataset directories (classnames.txt, zeroshot_classification_templates.txt,
    # test/{0..n}.tar): zero-shot or retrieval, plus probe / k-NN when a train/ split is there.
    clip_benchmark_dirs: list[str] = field(default_factory=list)
    knn_k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    knn_temperature: float = 0.07
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # Captioning (CoCa): built-in sets whose val images are captioned and scored (BLEU-4, CIDEr-D; shapes: the
    # share of captions naming each of eval.shapes_attributes right). CLIP_benchmark retrieval dirs are too.
    captioning: list[str] = field(default_factory=lambda: ["shapes"])
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    caption_examples: int = 8  # captioned images shown in the report
    examples: int = 3  # retrieval examples per direction in the report
    reconstructions: int = 6  # MAE: images in the original / masked / reconstructed grid


@dataclass
class LauncherConfig:
    name: LauncherName = LauncherName.local
    # The rest is for launcher=slurm (pretrain_mm/launch/slurm.py).
    nodes: int = 1
    gpus_per_node: int = 0  # 0: a CPU job
    tasks_per_node: int | None = None  # processes per node; None: one per GPU (1 on CPU)
    cpus_per_task: int | None = None  # None: data.num_workers + 1
    mem_gb: float | None = None  # per node; None: the cluster's default
    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    timeout_min: int = 60  # time limit of one run (minutes); at the limit the job checkpoints and requeues
    signal_delay_s: int = 120  # the stop signal (SIGUSR2) comes this long before the time limit
    max_requeues: int = 10  # how often the job may requeue itself (time limits + preemptions)
    job_name: str = "${run_name}"
    sbatch_extra: dict[str, Any] = field(
        default_factory=dict
    )  # more #SBATCH options: {exclusive: true, mail-type: END}
    setup: list[str] = field(default_factory=list)  # shell lines before srun: ["module load cuda/12.4"]
    folder: str | None = None  # submitit's scripts, logs and results; None: <run dir>/slurm
    eval_job: bool = False  # evaluate in a dependent job instead of after training in the same job
    wait: bool = False  # wait for the job and report how it ended


@dataclass
class DistillConfig:
    """Distillation (DistilBERT's recipe on CLIP's towers, as TinyCLIP): a trained teacher, this run's model the
    student. loss = contrastive_weight * the student's contrastive loss + kd_weight * T^2 * the soft
    cross-entropy from the teacher's image-text similarity distributions to the student's at temperature T
    (both directions, over the global batch) + cosine_weight * (1 - cosine) between the student's features,
    projected to the teacher's width where they differ, and the teacher's (images and texts)."""

    teacher: str | None = None  # a run directory, checkpoint or model.safetensors of a CLIP / CoCa; None: off
    temperature: float = 2.0
    kd_weight: float = 1.0
    cosine_weight: float = 1.0
    contrastive_weight: float = 1.0


@dataclass
class Config:
    run_name: str = "${model.kind}-${data.name}"  # the default run directory is outputs/<run_name>
    mode: Mode = Mode.train
    model: ModelConfig = MISSING  # model=clip (default) | model=coca | model=mae | model=mlm
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)


MODEL_SCHEMAS = {
    ModelKind.clip: ClipModelConfig,
    ModelKind.coca: CocaModelConfig,
    ModelKind.mae: MaeModelConfig,
    ModelKind.mlm: MlmModelConfig,
}


def masks_text(cfg) -> bool:
    """Whether the config's model learns masked language modelling (the mlm kind, or loss.mlm_weight > 0)."""
    return cfg.model.kind == ModelKind.mlm or (cfg.model.kind in TEXT_KINDS and cfg.loss.mlm_weight > 0)


def register_configs() -> None:
    """The schema for conf/config.yaml, and each model kind's schema as the `model` group's options."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for kind, schema in MODEL_SCHEMAS.items():
        store.store(group="model", name=str(kind), node=schema)


def default_config(kind: ModelKind | str = ModelKind.clip) -> Config:
    """The defaults of a run of this model kind, as a structured OmegaConf config (what Hydra composes with no
    groups or overrides)."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.structured(Config), {"model": MODEL_SCHEMAS[ModelKind(kind)]()})  # type: ignore[return-value]


def plain_config(cfg: Any) -> dict:
    """A config (or a slice of one) as plain, resolved Python values: choices as their strings, so that
    YAML, JSON and a safetensors header can hold it."""
    from omegaconf import OmegaConf

    return cast(dict, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
