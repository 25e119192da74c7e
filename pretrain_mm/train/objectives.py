"""What one batch costs: the CLIP contrastive loss (exact across ranks), CoCa's contrastive + captioning loss,
masked language modelling (alone, the mlm kind, or added to either), or the MAE reconstruction loss.

An objective is called as `objective(model, batch) -> loss`. `prepare(batch, step)` runs first on each
step's whole batch (on every rank: this rank's part of the global batch), before it is split into
micro-batches: it draws the step's MLM masks (models/mlm.py), so that every pass over a micro-batch sees
the same. `couples_batch` says whether the loss couples the samples of a batch (contrastive: every pair
is a negative), in which case it also exposes `forward` (the model's outputs, reduced to what the loss
needs per row) and `loss` (the loss of outputs) separately, so that gradient accumulation can compute the
loss of the whole batch from cached features; `separable_loss(out, whole)` is the part of `loss` that is
a sum over micro-batches (token losses: captioning, MLM; the caption-word term, one "token" a row), for one
micro-batch's outputs, normalised by the whole batch's tokens. An objective that does not couple the batch
gives each micro-batch's share of the step's loss with `micro_batch_loss(model, micro, parts)`.
`after_step(model)` runs after every optimiser step.
"""

import hashlib

import torch

from pretrain_mm.config import LossConfig, ModelKind
from pretrain_mm.models.clip import hard_negative_terms
from pretrain_mm.models.mlm import MaskingRule, mask_tokens
from pretrain_mm.models.words import word_cross_entropy
from pretrain_mm.ops import (
    IGNORE,
    distributed_contrastive_loss,
    distributed_row_mean,
    distributed_token_mean,
    token_cross_entropy,
    token_total,
)


def add_token_terms(out: dict, name: str, logits: torch.Tensor, targets: torch.Tensor, label_smoothing=0.0) -> None:
    """out[name_nll], out[name_tokens], out[name_correct]: per-row sums of a token loss (ops.token_cross_entropy),
    what GradCache keeps of (B, T, vocab) logits."""
    for key, value in token_cross_entropy(logits, targets, label_smoothing).items():
        out[f"{name}_{key}"] = value


def token_term(out: dict, whole: dict, name: str) -> torch.Tensor:
    """The token loss `name` of out's rows, summed, over the token count of `whole` on all ranks: the
    micro-batches' terms add up to the mean over every token of the global batch."""
    return distributed_token_mean(out[f"{name}_nll"], token_total(whole[f"{name}_tokens"]))


class TextMasking:
    """The step's MLM masks (models/mlm.py): a generator per (trainer.seed, step, rank), so a new mask every
    time a caption is seen, reproducible, and the same after an exact resume."""

    def __init__(self, rule: MaskingRule, seed: int, rank: int):
        self.rule, self.seed, self.rank = rule, seed, rank

    def __call__(self, batch: dict, step: int) -> dict:
        """The batch with mlm_text (masked ids) and mlm_labels (IGNORE where not chosen); a batch that arrives
        masked keeps its masks (the tests mask a whole batch once, then split it over ranks)."""
        if "mlm_text" in batch:
            return batch
        generator = torch.Generator().manual_seed(hash_seed(self.seed, step, self.rank))
        inputs, labels = mask_tokens(batch["text"], self.rule, generator)
        return {**batch, "mlm_text": inputs, "mlm_labels": labels}


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers, the same in every process (unlike hash() of a string)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


class CoupledObjective:
    """An objective whose loss couples the batch: `forward` and `loss` apart, for GradCache (module doc)."""

    couples_batch = True

    def forward(self, model, batch) -> dict:
        raise NotImplementedError

    def loss(self, out: dict) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model, batch):
        """The loss of a batch (prepared, where the objective masks text)."""
        return self.loss(self.forward(model, batch))

    def micro_batch_loss(self, model, micro: dict, parts: int) -> torch.Tensor:
        assert parts == 1, "a loss that couples the batch accumulates through GradCache (train/accumulation.py)"
        return self(model, micro)


class ContrastiveObjective(CoupledObjective):
    """The contrastive loss of the batch; where the batch has hard-negative captions (data.hard_negatives),
    plus loss.hard_negative_weight times NegCLIP's term (models.clip.hard_negative_terms); with loss.mlm_weight,
    masked language modelling; where the model has a word head (loss.word_weight), the caption-word term."""

    def __init__(self, loss_cfg: LossConfig, masking: TextMasking | None = None):
        self.kind, self.impl = str(loss_cfg.kind), str(loss_cfg.impl)  # plain strings for the ops (and torch.compile)
        self.hard_negative_weight = loss_cfg.hard_negative_weight
        self.masking = masking  # with loss.mlm_weight > 0: + mlm_weight * the MLM loss of the text tower
        self.mlm_weight = loss_cfg.mlm_weight if masking is not None else 0.0
        self.word_weight = loss_cfg.word_weight  # + word_weight * the caption-word loss (models/words.py)

    def prepare(self, batch: dict, step: int) -> dict:
        return self.masking(batch, step) if self.masking is not None else batch

    def forward(self, model, batch) -> dict:
        hard_negatives = "neg_text" in batch and self.hard_negative_weight
        out = model(
            batch["image"],
            batch["text"],
            batch["neg_text"] if hard_negatives else None,
            mlm_text=batch.get("mlm_text") if self.mlm_weight else None,
        )
        if hard_negatives:
            out["neg_mask"] = batch["neg_mask"]
        if self.mlm_weight:
            logits = out.pop("mlm_logits")
            add_token_terms(out, "mlm", logits, batch["mlm_labels"][:, : logits.shape[1]])
        if "word_logits" in out:  # a per-row loss over the rows of the whole batch: a token term of 1 token a row
            out["words_nll"] = word_cross_entropy(out.pop("word_logits"), out.pop("word_targets"))
            out["words_tokens"] = torch.ones_like(out["words_nll"], dtype=torch.long)
        return out

    def loss(self, out: dict) -> torch.Tensor:
        separable = self.separable_loss(out, out)
        return self.coupled_loss(out) + (separable if separable is not None else 0.0)

    def coupled_loss(self, out: dict):
        """The terms that couple the batch: contrastive, and NegCLIP's (a row mean through the features)."""
        bias = out.get("logit_bias") if self.kind == "sigmoid" else None
        loss = distributed_contrastive_loss(
            out["image_features"], out["text_features"], out["logit_scale"], bias, kind=self.kind, impl=self.impl
        )
        if "neg_text_features" in out and self.hard_negative_weight:
            loss = loss + self.hard_negative_weight * distributed_row_mean(
                hard_negative_terms(
                    out["image_features"],
                    out["text_features"],
                    out["neg_text_features"],
                    out["logit_scale"],
                    out["neg_mask"],
                )
            )
        return loss

    def separable_loss(self, out: dict, whole: dict) -> torch.Tensor | None:
        """The sum-over-rows terms of `out`: MLM (over the whole batch's masked tokens) and the caption words
        (over its rows)."""
        weights = {"mlm": self.mlm_weight, "words": self.word_weight if "words_nll" in out else 0.0}
        terms = [weight * token_term(out, whole, name) for name, weight in weights.items() if weight]
        return torch.stack(terms).sum() if terms else None

    def after_step(self, model) -> None:
        model.clamp_logit_scale_()


class CocaObjective(ContrastiveObjective):
    """The contrastive loss + loss.caption_weight * the next-token cross-entropy, averaged over every caption
    token of the global batch (end-of-text included, what follows it not), with loss.caption_label_smoothing."""

    def __init__(self, loss_cfg: LossConfig, masking: TextMasking | None = None):
        super().__init__(loss_cfg, masking)
        self.caption_weight, self.label_smoothing = loss_cfg.caption_weight, loss_cfg.caption_label_smoothing

    def forward(self, model, batch) -> dict:
        """The model's outputs, the caption logits reduced to per-row sums (GradCache keeps (B,), not (B, T, vocab))."""
        out = super().forward(model, batch)
        add_token_terms(out, "caption", out.pop("caption_logits"), out.pop("caption_targets"), self.label_smoothing)
        return out

    def separable_loss(self, out: dict, whole: dict) -> torch.Tensor:
        """The captioning term (and MLM's) of `out`'s rows: token sums over the whole batch's tokens (all ranks)."""
        mlm = super().separable_loss(out, whole)
        caption = self.caption_weight * token_term(out, whole, "caption")
        return caption if mlm is None else caption + mlm


class MlmObjective:
    """Masked language modelling alone (the mlm kind): the mean cross-entropy over every masked token of the
    global batch. The step's masks and masked-token count come from `prepare`, so the micro-batches' shares
    add up to the whole batch's loss exactly."""

    couples_batch = False

    def __init__(self, masking: TextMasking):
        self.masking = masking
        self.step_tokens: torch.Tensor | None = None  # the step's masked tokens over all ranks (prepare)

    def prepare(self, batch: dict, step: int) -> dict:
        batch = self.masking(batch, step)
        self.step_tokens = token_total((batch["mlm_labels"] != IGNORE).sum(dim=1))
        return batch

    def forward(self, model, batch) -> dict:
        logits = model(batch["mlm_text"])["mlm_logits"]
        out: dict = {}
        add_token_terms(out, "mlm", logits, batch["mlm_labels"][:, : logits.shape[1]])
        return out

    def micro_batch_loss(self, model, micro: dict, parts: int) -> torch.Tensor:
        assert self.step_tokens is not None, "prepare the step's batch first"
        return distributed_token_mean(self.forward(model, micro)["mlm_nll"], self.step_tokens)

    def __call__(self, model, batch):
        """The loss of a prepared batch (mlm_text, mlm_labels)."""
        out = self.forward(model, batch)
        return token_term(out, out, "mlm")

    def after_step(self, model) -> None:
        pass


class MaeObjective:
    couples_batch = False

    def prepare(self, batch: dict, step: int) -> dict:
        return batch

    def micro_batch_loss(self, model, micro: dict, parts: int) -> torch.Tensor:
        """A mean over samples (each masks the same number of patches): the micro-batches' means, averaged."""
        return self(model, micro) / parts

    def __call__(self, model, batch):
        return model(batch["image"])["loss"]

    def after_step(self, model) -> None:
        pass


def build_objective(
    kind: ModelKind, loss_cfg: LossConfig, masking: TextMasking | None = None
) -> "ContrastiveObjective | MlmObjective | MaeObjective":
    """The objective of the model's kind (the config's ModelKind admits no other); `masking` where the model
    learns masked language modelling (config.masks_text)."""
    if kind == ModelKind.clip:
        return ContrastiveObjective(loss_cfg, masking)
    if kind == ModelKind.coca:
        return CocaObjective(loss_cfg, masking)
    if kind == ModelKind.mlm:
        assert masking is not None, "the mlm kind masks text"
        return MlmObjective(masking)
    assert kind == ModelKind.mae, kind
    return MaeObjective()
