"""ViT-MAE: random masking, patchify, the masked-patch loss, the encoder's view of the image."""

import pytest
import torch

from helpers.tiny_models import images, tiny_mae
from pretrain_mm.models import patchify, random_masking, unpatchify
from pretrain_mm.models.mae import insert_mask_tokens

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("num_patches,ratio", [(16, 0.75), (196, 0.75), (10, 0.9), (50, 0.9), (49, 0.7), (7, 0.0)])
def test_random_masking_counts_and_restores(num_patches, ratio):
    ids_keep, mask, ids_restore = random_masking(3, num_patches, ratio)
    keep = round(num_patches * (1 - ratio))
    assert ids_keep.shape == (3, keep)
    assert mask.sum(1).tolist() == [num_patches - keep] * 3
    assert torch.all(mask.gather(1, ids_keep) == 0)
    # Unshuffling [kept tokens, mask tokens] puts every kept token back at its patch.
    tokens = torch.arange(num_patches, dtype=torch.float32).expand(3, -1)[..., None]
    restored = insert_mask_tokens(tokens.gather(1, ids_keep[..., None]), torch.full((1, 1, 1), -1.0), ids_restore)
    assert torch.equal(restored[..., 0], torch.where(mask.bool(), -1.0, tokens[..., 0]))


def test_random_masking_follows_the_noise():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    ids_keep, mask, _ = random_masking(1, 4, 0.5, noise=noise)
    assert ids_keep.tolist() == [[1, 3]] and mask.tolist() == [[1, 0, 1, 0]]
    with pytest.raises(ValueError):
        random_masking(1, 4, 1.0)


def test_patchify_layout_and_round_trip():
    x = images(2)
    patches = patchify(x, 8)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    r, c = 2, 1  # patch 9: pixels (row, column, channel)
    torch.testing.assert_close(
        patches[:, r * 4 + c], x[:, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8].permute(0, 2, 3, 1).reshape(2, -1)
    )
    assert torch.equal(unpatchify(patches, 8, 3), x)


def test_mae_forward_shapes_and_masked_mse():
    model, x = tiny_mae(), images(4)
    out = model(x)
    assert out["pred"].shape == (4, 16, 8 * 8 * 3) and out["mask"].shape == (4, 16)
    assert out["mask"].sum(1).tolist() == [12.0] * 4
    # The mask tokens are all alike: only the decoder's positions make their predictions differ.
    masked_pred = out["pred"][0][out["mask"][0].bool()]
    assert torch.cdist(masked_pred, masked_pred).add(torch.eye(12)).min() > 1e-3
    error = (out["pred"] - model.patchify(x)).pow(2).mean(-1)
    torch.testing.assert_close(out["loss"], error[out["mask"].bool()].mean())


def test_mae_loss_counts_only_masked_patches():
    model, x = tiny_mae(), images(2)
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
    out = model(x, noise=noise)
    mask = out["mask"].bool()
    pred = out["pred"].detach().requires_grad_()
    loss = model.forward_loss(x, pred, out["mask"])
    visible = model.patchify(x).clone()
    visible[~mask] += 5.0  # other targets at the visible patches: the loss is the same
    assert model.forward_loss(model.unpatchify(visible), pred, out["mask"]).item() == pytest.approx(loss.item())
    masked = model.patchify(x).clone()
    masked[mask] += 5.0
    assert model.forward_loss(model.unpatchify(masked), pred, out["mask"]).item() > loss.item() + 1.0
    (grad,) = torch.autograd.grad(loss, pred)
    assert torch.all(grad[~mask] == 0) and torch.all(grad[mask].abs().sum(-1) > 0)


def test_mae_encoder_sees_only_visible_patches():
    model, x = tiny_mae(), images(1)
    noise = torch.rand(1, 16, generator=torch.Generator().manual_seed(4))
    out = model(x, noise=noise)
    changed = model.patchify(x).clone()
    changed[out["mask"].bool()] = 0.0  # blank every masked patch
    again = model(model.unpatchify(changed), noise=noise)
    torch.testing.assert_close(again["pred"], out["pred"])


def test_norm_pix_loss_ignores_each_patch_brightness_and_contrast():
    model, x = tiny_mae(norm_pix_loss=True), images(2)
    out = model(x)
    patches = model.patchify(x)
    shifted = patches * torch.rand(2, 16, 1) * 3 + 0.5 + torch.randn(2, 16, 1)  # per-patch affine
    again = model.forward_loss(model.unpatchify(shifted), out["pred"], out["mask"])
    torch.testing.assert_close(again, out["loss"], atol=1e-4, rtol=1e-4)
    plain = tiny_mae()
    assert plain.forward_loss(model.unpatchify(shifted), out["pred"], out["mask"]) != out["loss"]


def test_mae_encode_image_and_backward():
    model = tiny_mae().train()
    assert model.encode_image(images(3)).shape == (3, 192)
    model(images(3))["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert {"encoder.cls_token", "mask_token"} <= model.no_weight_decay()


def test_mae_runs_with_bf16_parameters_and_float32_position_buffers():
    """What FSDP2's MixedPrecisionPolicy(param_dtype=bf16) makes of a model: buffers stay float32."""
    model = tiny_mae()
    for p in model.parameters():
        p.data = p.data.bfloat16()
    assert model.decoder_pos_embed.dtype == model.encoder.pos_embed.dtype == torch.float32
    out = model(images(2).bfloat16())
    assert out["pred"].dtype == torch.bfloat16 and torch.isfinite(out["loss"])
