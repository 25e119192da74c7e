"""The models: shapes for every size, positions, patch subsets, EOT pooling, CLIP's loss and init."""

import math

import pytest
import torch

from helpers.tiny_models import CONTEXT, VOCAB, captions, clip_loss, images, tiny_clip, tiny_mae, tiny_text, tiny_vit
from pretrain_mm.models import CLIP, MAE, SIZES, build_model, model_arguments, sincos_pos_embed_2d
from pretrain_mm.ops import reference

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# ---------------------------------------------------------------- sin-cos positions


def test_sincos_2d_is_mae_layout():
    dim, grid = 16, 3
    emb = sincos_pos_embed_2d(dim, grid, cls_token=True)
    assert emb.shape == (1 + grid * grid, dim)
    assert torch.equal(emb[0], torch.zeros(dim))
    omega = torch.tensor([10000 ** (-k / 4) for k in range(4)], dtype=torch.float64)
    for r in range(grid):
        for c in range(grid):
            want = torch.cat([torch.sin(c * omega), torch.cos(c * omega), torch.sin(r * omega), torch.cos(r * omega)])
            torch.testing.assert_close(emb[1 + r * grid + c], want)


def test_sincos_2d_properties():
    dim, grid = 32, 5
    emb = sincos_pos_embed_2d(dim, grid)
    # sin^2 + cos^2 = 1 per frequency: every position has squared norm dim / 2.
    torch.testing.assert_close(emb.pow(2).sum(1), torch.full((grid * grid,), dim / 2, dtype=torch.float64))
    gram = emb @ emb.T
    assert (gram - torch.diag(gram.diag())).max() < dim / 2 - 1e-3  # positions are distinct
    # Translation invariance: the inner product depends only on the offset between two positions.
    at = lambda r, c: r * grid + c  # noqa: E731
    assert gram[at(0, 1), at(2, 3)].item() == pytest.approx(gram[at(1, 0), at(3, 2)].item())
    assert gram[at(0, 0), at(0, 4)].item() == pytest.approx(gram[at(3, 0), at(3, 4)].item())
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(30, 2)


# ---------------------------------------------------------------- ViT


@pytest.mark.parametrize(
    "pool,output_dim,class_token,pos_embed",
    [("cls", 0, True, "learned"), ("mean", 10, True, "sincos"), ("mean", 7, False, "learned")],
)
def test_vit_shapes(pool, output_dim, class_token, pos_embed):
    vit = tiny_vit(pool=pool, output_dim=output_dim, class_token=class_token, pos_embed=pos_embed)
    x = images(3)
    assert vit.forward_features(x).shape == (3, int(class_token) + 16, 64)
    assert vit(x).shape == (3, output_dim or 64)
    assert torch.isfinite(vit(x)).all()


def test_vit_rejects_bad_arguments():
    with pytest.raises(ValueError):
        tiny_vit(pool="cls", class_token=False)
    with pytest.raises(ValueError):
        tiny_vit(image_size=30)
    with pytest.raises(ValueError):
        tiny_vit()(torch.randn(1, 3, 64, 64))


def test_keep_all_patches_in_order_equals_full_forward_exactly():
    vit, x = tiny_vit(pos_embed="learned"), images(2)
    keep = torch.arange(16).expand(2, -1)
    assert torch.equal(vit.forward_features(x, keep), vit.forward_features(x))


def test_permuted_patches_permute_the_tokens():
    """Positions travel with their patch: attention without a mask is permutation-equivariant."""
    vit, x = tiny_vit(), images(2)
    perm = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(s)) for s in range(2)])
    full, permuted = vit.forward_features(x), vit.forward_features(x, perm)
    torch.testing.assert_close(permuted[:, 0], full[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        permuted[:, 1:], full[:, 1:].gather(1, perm[..., None].expand(-1, -1, 64)), atol=1e-5, rtol=1e-5
    )


def test_vit_knows_where_each_patch_is():
    """Without positions a ViT is blind to the arrangement: swapping two patches would change nothing."""
    for pos_embed in ("learned", "sincos"):
        vit, x = tiny_vit(pos_embed=pos_embed), images(1)
        swapped = x.clone()
        swapped[..., 0:8, 0:8], swapped[..., 8:16, 8:16] = x[..., 8:16, 8:16], x[..., 0:8, 0:8]
        assert not torch.allclose(vit(swapped), vit(x), atol=1e-4)


def test_subset_forward_sees_only_the_kept_patches():
    vit, x = tiny_vit(), images(1)
    keep = torch.tensor([[0, 5, 10, 15]])  # the diagonal patches of the 4x4 grid
    changed_dropped, changed_kept = x.clone(), x.clone()
    changed_dropped[..., 0:8, 8:16] += 3.0  # patch 1, dropped
    changed_kept[..., 8:16, 8:16] += 3.0  # patch 5, kept
    out = vit.forward_features(x, keep)
    assert out.shape == (1, 5, 64)
    assert torch.equal(vit.forward_features(changed_dropped, keep), out)
    assert not torch.allclose(vit.forward_features(changed_kept, keep), out)


def test_patch_dropout_only_in_training():
    vit = tiny_vit(patch_dropout=0.5)
    x = images(2)
    assert vit.forward_features(x).shape[1] == 1 + 16  # eval: every patch
    vit.train()
    assert vit.forward_features(x).shape[1] == 1 + 8
    assert vit.forward_features(x, torch.arange(16).expand(2, -1)).shape[1] == 1 + 16  # explicit wins
    assert vit(x).shape == (2, 64)


def test_drop_path_is_random_in_training_only():
    vit = tiny_vit(drop_path_rate=0.5)
    assert [b.drop_path for b in vit.blocks] == [0.0, 0.5]
    x = images(8)
    assert torch.equal(vit(x), vit(x))
    vit.train()
    torch.manual_seed(0)
    assert not torch.allclose(vit(x), vit(x))


def test_vit_layer_ids_and_weight_decay_groups():
    vit = tiny_vit(output_dim=5)
    ids = {name: vit.layer_id(name) for name, _ in vit.named_parameters()}
    assert ids["patch_embed.weight"] == ids["cls_token"] == ids["pos_embed"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.1.mlp.fc2.bias"] == 2
    assert ids["norm.weight"] == ids["head.weight"] == vit.depth + 1 == vit.num_layers - 1
    assert vit.layer_id("blocks.1._checkpoint_wrapped_module.attn.qkv.weight") == 2
    no_decay = vit.no_weight_decay()
    assert {"cls_token", "pos_embed", "patch_embed.bias", "norm.weight", "blocks.0.norm1.bias"} <= no_decay
    assert not {"patch_embed.weight", "blocks.0.attn.qkv.weight", "head.weight"} & no_decay
    assert "pos_embed" not in tiny_vit(pos_embed="sincos").no_weight_decay()  # a buffer, not a parameter


def test_meta_build_then_init_weights_materialises_everything():
    with torch.device("meta"):
        mae = tiny_mae()
    assert mae.encoder.pos_embed.is_meta
    mae.to_empty(device="cpu")
    mae.init_weights()
    fresh = tiny_mae()
    torch.testing.assert_close(mae.encoder.pos_embed, fresh.encoder.pos_embed)
    torch.testing.assert_close(mae.decoder_pos_embed, fresh.decoder_pos_embed)
    qkv = mae.encoder.blocks[0].attn.qkv.weight
    assert qkv.std().item() == pytest.approx(0.02, rel=0.1)  # trunc normal (cut at +-2, as timm: not in stds)
    assert torch.equal(mae.encoder.blocks[0].norm1.weight, torch.ones(192))
    assert all(torch.isfinite(p).all() for p in mae.parameters())


# ---------------------------------------------------------------- text transformer


def test_eot_is_the_last_non_pad_position_not_the_argmax():
    text = torch.tensor(
        [
            [1, 63, 5, 7, 0, 0],  # max id in the middle: argmax would say 1
            [1, 2, 3, 4, 5, 6],  # no padding
            [1, 9, 0, 4, 0, 0],  # a pad id inside the text
            [0, 0, 0, 0, 0, 0],
        ]
    )  # nothing: position 0
    model = tiny_text()
    assert model.eot_positions(text).tolist() == [3, 5, 3, 0]
    assert tiny_text(pad_id=4).eot_positions(text).tolist() == [5, 5, 5, 5]
    hidden = model.forward_tokens(text)
    torch.testing.assert_close(model.pool(hidden, text), hidden[torch.arange(4), torch.tensor([3, 5, 3, 0])])


def test_text_features_ignore_padding():
    model, text = tiny_text(), captions(4)
    features = model(text)
    assert features.shape == (4, 32)
    for row in range(4):
        length = int((text[row] != 0).sum())
        alone = model(text[row : row + 1, :length])  # the same text with no padding at all
        torch.testing.assert_close(features[row : row + 1], alone, atol=1e-5, rtol=1e-5)


def test_text_cuts_the_padding_after_the_longest_text_without_changing_features():
    model, text = tiny_text(), captions(4, min_len=2)
    text[:, CONTEXT // 2 :] = 0  # every row ends before the middle: half the columns are padding
    full = model.proj(model.pool(model.forward_tokens(text), text))  # the blocks on every column
    # fp32 rounding only: the shorter sequence sums in other blocks (1.3e-6 apart on CI's bf16-native CPU, features ~1).
    torch.testing.assert_close(model(text), full, atol=1e-5, rtol=1e-5)


def test_text_is_causal():
    model, text, t = tiny_text(), captions(2, min_len=CONTEXT), 6
    changed = text.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] % (VOCAB - 1)) + 1  # other non-pad ids after t
    before, after = model.forward_tokens(text), model.forward_tokens(changed)
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(after[:, t + 1], before[:, t + 1])
    with pytest.raises(ValueError):
        model(torch.ones(1, CONTEXT + 1, dtype=torch.long))


# ---------------------------------------------------------------- CLIP


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_clip_outputs_and_init(kind):
    model = tiny_clip(loss_kind=kind)
    out = model(images(4), captions(4))
    assert out["image_features"].shape == out["text_features"].shape == (4, 128)
    for key in ("image_features", "text_features"):
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(4))
    assert out["logit_scale"].shape == (1,)  # 1-D, not 0-d: FSDP2 cannot shard scalars
    if kind == "softmax":
        assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5) and out["logit_bias"] is None
    else:
        assert out["logit_scale"].item() == pytest.approx(10.0, rel=1e-5)
        assert out["logit_bias"].item() == -10.0
    torch.testing.assert_close(model.encode_image(images(4)), out["image_features"])
    torch.testing.assert_close(model.encode_text(captions(4)), out["text_features"])
    # probes read the pooled tower before the projection (the CLIP paper's I_f)
    representation = model.representation(images(4))
    assert representation.shape == (4, model.visual.width)
    torch.testing.assert_close(model.visual.head(representation), model.encode_image(images(4), normalize=False))


def test_logit_scale_is_clamped_at_100_as_a_parameter():
    model = tiny_clip()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    out = model(images(2), captions(2))
    assert out["logit_scale"].item() == pytest.approx(1000.0, rel=1e-5)  # the forward does not clamp
    clip_loss(out, model.loss_kind).backward()
    assert model.logit_scale.grad.item() != 0.0  # so the gradient can bring it back
    model.clamp_logit_scale_()  # what the trainer does after each optimiser step
    assert model(images(2), captions(2))["logit_scale"].item() == pytest.approx(100.0, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == 0.0  # and at least 1, as open_clip


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_clip_loss_matches_reference(kind):
    model = tiny_clip(loss_kind=kind)
    out = model(images(6), captions(6))
    args = [out["image_features"], out["text_features"], out["logit_scale"]]
    want = reference.softmax_loss(*args) if kind == "softmax" else reference.sigmoid_loss(*args, out["logit_bias"])
    torch.testing.assert_close(clip_loss(out, model.loss_kind), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clip_loss(out, kind, impl="reference"), want)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_clip_backward_reaches_every_parameter(kind):
    model = tiny_clip(loss_kind=kind, patch_dropout=0.25, drop_path_rate=0.1).train()
    clip_loss(model(images(4), captions(4)), kind).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_clip_weight_decay_groups():
    no_decay = tiny_clip(loss_kind="sigmoid").no_weight_decay()
    assert {
        "logit_scale",
        "logit_bias",
        "visual.cls_token",
        "visual.pos_embed",
        "text.positional_embedding",
        "text.norm.weight",
    } <= no_decay
    assert not {"text.token_embedding.weight", "text.proj.weight", "visual.head.weight"} & no_decay


# ---------------------------------------------------------------- named sizes


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("kind", ["clip", "mae"])
def test_every_named_size_builds_and_runs_on_meta(kind, size):
    image_size = 32 if size == "tiny" else 224
    with torch.device("meta"):
        model = build_model(kind, size, image_size=image_size, vocab_size=49408, context_length=77)
        x = torch.empty(2, 3, image_size, image_size)
        if kind == "clip":
            out = model(x, torch.zeros(2, 77, dtype=torch.long))
            assert out["image_features"].shape == out["text_features"].shape == (2, SIZES[size]["embed_dim"])
        else:
            patch = SIZES[size]["patch_size"]
            out = model(x)
            assert out["pred"].shape == (2, (image_size // patch) ** 2, patch * patch * 3)
            assert model.encode_image(x).shape == (2, SIZES[size]["vision_width"])
    assert len(model.no_weight_decay()) > 0


@pytest.mark.parametrize(
    "kind,size,overrides,millions",
    [
        ("clip", "base", {}, 149.62),  # open_clip ViT-B-16
        ("clip", "large", {}, 427.62),  # open_clip ViT-L-14
        ("clip", "huge", {}, 986.11),  # open_clip ViT-H-14
        ("mae", "base", {"patch_size": 16}, 111.66),
        ("mae", "large", {"patch_size": 16}, 329.24),  # MAE ViT-L/16 (329.5M counting its fixed positions)
    ],
)
def test_named_sizes_have_the_papers_parameter_counts(kind, size, overrides, millions):
    with torch.device("meta"):
        model = build_model(kind, size, vocab_size=49408, **overrides)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, rel=2e-3)


def test_build_model_arguments():
    args = model_arguments("mae", "base", mask_ratio=0.9)
    assert args["vision_width"] == 768 and args["mask_ratio"] == 0.9 and "text_width" not in args
    model = tiny_clip(loss_kind="sigmoid", embed_dim=64, patch_size=16)
    assert isinstance(model, CLIP) and model.loss_kind == "sigmoid" and model.visual.num_patches == 4
    assert model(images(1), captions(1))["image_features"].shape == (1, 64)
    assert isinstance(tiny_mae(), MAE)
    for bad in (
        dict(kind="vae", size="tiny"),
        dict(kind="clip", size="gigantic", vocab_size=10),
        dict(kind="mae", size="tiny", text_width=3),
        dict(kind="clip", size="tiny"),
    ):
        with pytest.raises(ValueError):
            build_model(**bad)


def test_model_args_from_the_config_reach_the_constructor():

    from pretrain_mm.builders import model_from_config
    from pretrain_mm.config import default_config

    cfg = default_config("clip")
    cfg.data.image_size = 32
    cfg.model.args = {"patch_size": 16, "vision_norm_pre": False}
    model = model_from_config(cfg, VOCAB)
    assert model.visual.num_patches == 4 and isinstance(model.visual.norm_pre, torch.nn.Identity)
    cfg.model.args = {}
    assert isinstance(model_from_config(cfg, VOCAB).visual.norm_pre, torch.nn.LayerNorm)  # CLIP's ln_pre, the default
    cfg.model.args = {"patch_sise": 16}
    with pytest.raises(ValueError, match="patch_sise"):
        model_from_config(cfg, VOCAB)


def test_the_clip_style_vision_init_is_open_clips():
    model = tiny_clip()  # the default
    visual, width = model.visual, model.visual.width
    block = visual.blocks[0]
    assert block.attn.qkv.weight.std().item() == pytest.approx((2 / (width + 3 * width)) ** 0.5, rel=0.1)  # xavier
    assert block.mlp.fc1.weight.std().item() == pytest.approx((3 * width) ** -0.5, rel=0.1)  # PyTorch's default
    assert block.attn.qkv.bias.abs().max() == 0 and block.attn.proj.bias.abs().max() == 0
    assert block.mlp.fc1.bias.abs().max() > 0  # default biases are not zero
    assert visual.pos_embed.std().item() == pytest.approx(width**-0.5, rel=0.1)
    assert tiny_clip(vision_init="timm").visual.pos_embed.std().item() == pytest.approx(0.02, rel=0.15)  # timm's
    with pytest.raises(ValueError, match="init"):
        tiny_clip(vision_init="lecun")


def test_the_conv_stem_makes_one_token_per_patch_and_is_initialised_on_meta():
    vit = tiny_vit(stem="conv")  # 32 px in 8 px patches: 3 stride-2 convs, channels 16, 32, 64, then a 1x1 conv
    convs = [m for m in vit.patch_embed if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64] and [c.stride for c in convs[:3]] == [(2, 2)] * 3
    assert vit.embed_patches(images(2)).shape == tiny_vit().embed_patches(images(2)).shape == (2, 16, 64)
    no_decay = vit.no_weight_decay()
    assert {"patch_embed.1.weight", "patch_embed.1.bias", "patch_embed.9.bias"} <= no_decay  # BatchNorm, the 1x1's bias
    assert "patch_embed.0.weight" not in no_decay and vit.layer_id("patch_embed.4.weight") == 0
    with torch.device("meta"):
        clip = tiny_clip(vision_stem="conv")
    clip.to_empty(device="cpu")
    clip.init_weights()
    stem = clip.visual.patch_embed
    assert torch.equal(stem[1].running_var, torch.ones(stem[1].num_features))  # reset, not to_empty's garbage
    assert all(torch.isfinite(t).all() for t in [*clip.parameters(), *clip.buffers()])
    assert torch.isfinite(clip.encode_image(images(2))).all()
    with pytest.raises(ValueError, match="power of 2"):
        tiny_vit(image_size=36, patch_size=12, stem="conv")
    with pytest.raises(ValueError, match="stem"):
        tiny_vit(stem="resnet")
