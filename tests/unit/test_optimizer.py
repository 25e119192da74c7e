"""The optimiser's real parameter groups follow the model's no_weight_decay(); the gradient norm, clipping,
logit_scale's cap."""

import math
from types import SimpleNamespace

import pytest
import torch

from helpers.tiny_models import captions, images, tiny_clip, tiny_mae
from pretrain_mm.config import LossConfig
from pretrain_mm.eval.finetune import Classifier, layer_decay_groups
from pretrain_mm.train.objectives import ContrastiveObjective
from pretrain_mm.train.optimizer import build_optimizer, clip_gradients, grad_norm, weight_decay_groups
from pretrain_mm.train.parallelize import apply_activation_checkpointing

OPTIM = SimpleNamespace(lr=1e-3, weight_decay=0.1, betas=[0.9, 0.98], eps=1e-6)


def decay_of(optimizer, model) -> dict[str, float]:
    """Each parameter's name -> the weight decay its group really applies."""
    by_id = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert len(by_id) == sum(len(g["params"]) for g in optimizer.param_groups)  # each parameter once
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


@pytest.mark.parametrize("make", [tiny_clip, tiny_mae, lambda: tiny_clip(loss_kind="sigmoid")])
def test_decay_groups_are_the_models_rule(make):
    model = make()
    decay = decay_of(build_optimizer(model, OPTIM), model)
    skip = model.no_weight_decay()
    assert {n for n, d in decay.items() if d == 0.0} == skip
    assert {n for n, d in decay.items() if d == OPTIM.weight_decay} == set(decay) - skip


def test_what_decays_in_clip():
    model = tiny_clip(loss_kind="sigmoid")
    decay = decay_of(build_optimizer(model, OPTIM), model)
    for name in (
        "text.token_embedding.weight",
        "visual.blocks.0.attn.qkv.weight",
        "visual.head.weight",
        "text.proj.weight",
    ):
        assert decay[name] == 0.1, name
    for name in (
        "text.positional_embedding",
        "visual.pos_embed",
        "visual.cls_token",
        "logit_scale",
        "logit_bias",
        "visual.blocks.0.norm1.weight",
        "visual.blocks.0.attn.qkv.bias",
    ):
        assert decay[name] == 0.0, name


def test_the_rule_survives_wrapping():
    plain = tiny_clip()
    wrapped = tiny_clip()
    apply_activation_checkpointing(wrapped)  # renames every block parameter
    plain_decay = list(decay_of(build_optimizer(plain, OPTIM), plain).values())
    assert list(decay_of(build_optimizer(wrapped, OPTIM), wrapped).values()) == plain_decay


def test_finetuning_uses_the_same_rule():
    tower = tiny_mae().encoder
    model = Classifier(tower, num_classes=3)
    groups = layer_decay_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    skip = model.no_weight_decay()
    assert "head.bias" in skip and "head.weight" not in skip and "tower.cls_token" in skip
    for name, p in model.named_parameters():
        assert by_id[id(p)] == (0.0 if name in skip else 0.05), name


def test_grad_norm_and_clipping_match_torch():
    model = tiny_clip()
    out = model(images(4), captions(4))
    (out["image_features"] @ out["text_features"].T * out["logit_scale"]).sum().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    norm = grad_norm(model.parameters())
    torch_norm = torch.nn.utils.clip_grad_norm_([_with_grad(g) for g in reference], 0.5)
    assert norm == pytest.approx(float(torch_norm), rel=1e-6)
    clip_gradients(model.parameters(), 0.5, norm)
    assert grad_norm(model.parameters()) == pytest.approx(0.5, rel=1e-4)


def _with_grad(grad):
    p = torch.nn.Parameter(torch.zeros_like(grad))
    p.grad = grad.clone()
    return p


def test_logit_scale_is_clamped_after_the_step_and_its_gradient_lives_at_the_cap():
    model = tiny_clip()
    cap = math.log(model.max_logit_scale)
    with torch.no_grad():
        model.logit_scale.fill_(cap)
    loss = ContrastiveObjective(LossConfig(kind="softmax", impl="fused"))(
        model, {"image": images(8), "text": captions(8)}
    )
    loss.backward()
    assert model.logit_scale.grad.abs().item() > 0  # a forward clamp would give exactly 0 here
    with torch.no_grad():
        model.logit_scale.fill_(cap + 0.5)
    ContrastiveObjective(LossConfig(kind="softmax", impl="fused")).after_step(model)
    assert model.logit_scale.item() == pytest.approx(cap)


def test_plain_parameters_take_the_fused_adamw_with_the_same_update():
    models = [tiny_clip(), tiny_clip()]
    models[1].load_state_dict(models[0].state_dict())
    fused = build_optimizer(models[0], OPTIM)
    assert fused.defaults["fused"] is True
    loop = torch.optim.AdamW(
        weight_decay_groups(models[1], OPTIM.weight_decay),
        lr=OPTIM.lr,
        betas=tuple(OPTIM.betas),
        eps=OPTIM.eps,
        foreach=False,
    )
    for model, optimizer in zip(models, (fused, loop)):
        for _ in range(3):
            out = model(images(4), captions(4))
            (out["image_features"].square().sum() - out["text_features"].sum()).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert [g["weight_decay"] for g in fused.param_groups] == [OPTIM.weight_decay, 0.0]
    # Each step moves a parameter by about lr = 1e-3; Adam's division by sqrt(v) turns the kernels'
    # different summation order in near-zero gradients into differences of ~1% of one step.
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)
