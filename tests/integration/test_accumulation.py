"""Contrastive accumulation (GradCache) gives the whole batch's loss and gradients, on 1 and 2 processes (CLIP,
CoCa, whose captioning and caption-word terms are sums over micro-batches, CLIP + masked language modelling),
and so does summed accumulation for masked language modelling alone (a mean over the step's masked tokens)."""

import math

import pytest
import torch
from torch.distributed.tensor import DTensor

from helpers.multiprocess import run_distributed
from helpers.tiny_models import MLM_RULE, captions, images, tiny_clip, tiny_coca, tiny_mlm
from pretrain_mm.config import DistillConfig, LossConfig, ModelKind
from pretrain_mm.train.accumulation import accumulate_gradients
from pretrain_mm.train.distill import DistillationObjective
from pretrain_mm.train.objectives import TextMasking, build_objective
from pretrain_mm.train.optimizer import grad_norm

BATCH, MICRO = 16, 4
KINDS = ("softmax", "sigmoid")


MASKS = ("clip_mlm", "mlm", "distill")  # the archs that mask text


def objective(kind, arch="clip"):
    """arch: clip, coca (+ 0.4 x its word head's caption-word term), clip_mlm (CLIP + 0.5 x MLM), mlm (the text
    tower alone) or distill (CLIP + 0.5 x MLM, taught by a CLIP of another width: the student's distill heads
    map to it)."""
    loss = LossConfig(
        kind=kind, impl="fused", hard_negative_weight=0.7, caption_label_smoothing=0.1, mlm_weight=0.5, word_weight=0.4
    )
    masking = TextMasking(MLM_RULE, seed=0, rank=0) if arch in MASKS else None
    if arch == "distill":
        weights = DistillConfig(temperature=2.0, kd_weight=0.7, cosine_weight=0.3, contrastive_weight=0.5)
        return DistillationObjective(build_objective(ModelKind.clip, loss, masking), teacher64(), weights)
    return build_objective(ModelKind.clip if arch == "clip_mlm" else ModelKind(arch), loss, masking)


def teacher64():
    """Another architecture than the student's (feature width, text depth), built alike in every process."""
    return tiny_clip(embed_dim=96, text_depth=2).double().requires_grad_(False).eval()


def model64(kind, arch="clip", **kwargs):
    if arch == "mlm":
        return tiny_mlm(**kwargs).double()
    if arch == "distill":
        return tiny_clip(loss_kind=kind, distill_dim=96, mlm=True, **kwargs).double()
    if arch == "coca":
        return tiny_coca(loss_kind=kind, word_head=True, **kwargs).double()
    return tiny_clip(loss_kind=kind, mlm=arch == "clip_mlm", **kwargs).double()


def whole_batch(rows=slice(None), negatives=False, arch="clip"):
    """BATCH pairs; with negatives, hard-negative captions for the rows neg_mask marks (not all of them); for
    the archs that mask text, the masks of the whole batch (one draw, then sliced)."""
    batch = {"image": images(BATCH).double(), "text": captions(BATCH)}
    if negatives:
        batch["neg_text"] = captions(BATCH, seed=3)
        batch["neg_mask"] = torch.arange(BATCH) % 3 != 0
    if arch in MASKS:
        batch = TextMasking(MLM_RULE, seed=0, rank=0)(batch, step=5)
    return {k: v[rows] for k, v in batch.items()}


def accumulate(model, obj, batch, parts):
    """What the trainer does with a step's batch: prepare it, split it, accumulate."""
    return accumulate_gradients(model, obj, split(obj.prepare(batch, 5), parts))


def split(batch, parts):
    size = batch["image"].shape[0] // parts
    return [{k: v[i * size : (i + 1) * size] for k, v in batch.items()} for i in range(parts)]


def grads(model):
    out = {}
    for name, p in model.named_parameters():
        g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        out[name] = g.detach().clone() if g is not None else torch.zeros(p.shape, dtype=p.dtype)
    return out


def assert_same_grads(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize(
    "arch,negatives",
    [("clip", False), ("clip", True), ("coca", True), ("clip_mlm", False), ("distill", False)],
    ids=["pairs", "hard_negatives", "coca", "clip_mlm", "distill"],
)
@pytest.mark.parametrize("kind", KINDS)
def test_accumulated_gradients_equal_the_whole_batch(kind, arch, negatives):
    model = model64(kind, arch)
    loss_one = accumulate(model, objective(kind, arch), whole_batch(negatives=negatives, arch=arch), 1)
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    loss_four = accumulate(model, objective(kind, arch), whole_batch(negatives=negatives, arch=arch), MICRO)
    assert loss_four == pytest.approx(loss_one, rel=1e-12)
    assert_same_grads(grads(model), expected)

    # What summing micro-batch losses trains instead (B/k negatives): a different loss and gradient.
    model.zero_grad(set_to_none=True)
    batches = split(whole_batch(negatives=negatives, arch=arch), MICRO)
    loss_summed = sum(objective(kind, arch)(model, micro) / MICRO for micro in batches)
    loss_summed.backward()
    assert loss_summed.item() != pytest.approx(loss_one, rel=1e-6)
    assert not torch.allclose(grads(model)["visual.head.weight"], expected["visual.head.weight"], rtol=1e-3)


def test_masked_language_modelling_accumulated_is_the_mean_over_the_steps_masked_tokens():
    """The mlm kind's micro-batches hold different numbers of masked tokens: their shares of the step's loss
    are token sums over the step's count, so accumulating gives the whole batch's loss and gradient, where
    averaging the micro-batch means would not."""
    model = model64("softmax", "mlm")
    batch = whole_batch(arch="mlm")
    counts = [int((m["mlm_labels"] != -100).sum()) for m in split(batch, MICRO)]
    assert len(set(counts)) > 1  # unequal, or the check below could not fail
    loss_one = accumulate(model, objective("softmax", "mlm"), batch, 1)
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    loss_four = accumulate(model, objective("softmax", "mlm"), batch, MICRO)
    assert loss_four == pytest.approx(loss_one, rel=1e-12)
    assert_same_grads(grads(model), expected)
    obj = objective("softmax", "mlm")
    with torch.no_grad():
        mean_of_means = sum(obj(model, micro) for micro in split(batch, MICRO)) / MICRO
    assert mean_of_means.item() != pytest.approx(loss_one, rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_patch_dropout_and_drop_path_draw_the_same_in_both_passes(kind):
    """With randomness in the towers, GradCache equals keeping every micro-batch's graph
    (open_clip's --accum-freq) from the same RNG state: the second pass redraws the first's masks."""
    model = model64(kind, patch_dropout=0.5, drop_path_rate=0.3).train()
    torch.manual_seed(7)
    outs = [model(m["image"], m["text"]) for m in split(whole_batch(), MICRO)]
    cat = {k: torch.cat([o[k] for o in outs]) for k in ("image_features", "text_features")}
    loss_graphs = objective(kind).loss({**outs[0], **cat})
    loss_graphs.backward()
    expected, after_graphs = grads(model), torch.get_rng_state()

    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    loss = accumulate_gradients(model, objective(kind), split(whole_batch(), MICRO))
    assert loss == pytest.approx(loss_graphs.item(), rel=1e-12)
    assert_same_grads(grads(model), expected)
    assert torch.equal(torch.get_rng_state(), after_graphs)  # the stream goes on as after one pass


def fsdp_accumulated(rank, world, kind, arch, negatives):
    from pretrain_mm.train.parallelize import apply_fsdp

    model = model64(kind, arch)
    apply_fsdp(model, bf16=False)
    per_rank = BATCH // world
    mine = whole_batch(slice(rank * per_rank, (rank + 1) * per_rank), negatives, arch)
    loss = accumulate(model, objective(kind, arch), mine, MICRO // world * 2)
    return loss, grads(model), grad_norm(model.parameters())


# softmax with hard negatives covers plain softmax too (its term adds to the same loss); ~25 s a case.
@pytest.mark.parametrize(
    "kind,arch,negatives",
    [
        ("softmax", "clip", True),
        ("sigmoid", "clip", False),
        ("softmax", "coca", False),
        ("softmax", "mlm", False),
        # distill: with MLM too, so the text blocks run twice a forward (causal, then bidirectional)
        ("sigmoid", "distill", False),
    ],
)
def test_two_fsdp2_processes_accumulating_equal_one_process_on_the_whole_batch(tmp_path, kind, arch, negatives):
    model = model64(kind, arch)
    loss_one = accumulate(model, objective(kind, arch), whole_batch(negatives=negatives, arch=arch), 1)
    expected = grads(model)
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in expected.values()))
    results = run_distributed(fsdp_accumulated, 2, tmp_path, kind, arch, negatives)
    for loss, got, got_norm in results:
        assert loss == pytest.approx(loss_one, rel=1e-12)  # every rank holds the global loss
        assert_same_grads(got, expected)
        assert got_norm == pytest.approx(norm, rel=1e-12)


def fsdp_bf16_scalars(rank, world):
    from pretrain_mm.train.parallelize import apply_fsdp

    model = tiny_clip(loss_kind="sigmoid")
    apply_fsdp(model, bf16=True)  # MixedPrecisionPolicy(param_dtype=bf16) works on CPU with gloo too
    batch = {"image": images(8, seed=rank), "text": captions(8, seed=rank + 10)}
    out = model(batch["image"], batch["text"])
    objective("sigmoid").loss(out).backward()
    return (
        out["image_features"].dtype,
        out["logit_scale"].dtype,
        out["logit_bias"].dtype,
        float(out["logit_scale"]),
        isinstance(model.logit_scale, DTensor),
        model.logit_scale.grad.clone(),
    )


def test_fsdp2_mixed_precision_keeps_the_scale_and_bias_fp32(tmp_path):
    results = run_distributed(fsdp_bf16_scalars, 2, tmp_path)
    for features, scale, bias, value, sharded, _ in results:
        assert features == torch.bfloat16 and scale == bias == torch.float32 and not sharded
        assert value == pytest.approx(10.0, rel=1e-6)  # exp(log 10) exactly, not bf16's 10.0625 or 9.9375
    assert torch.equal(results[0][5], results[1][5])  # averaged over ranks, so every rank steps alike
