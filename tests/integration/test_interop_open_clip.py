"""Our CLIP / SigLIP through open_clip and back: the same embeddings (fp32, 1e-5), for every named size."""

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from pretrain_mm.interop import from_open_clip_state, to_open_clip
from pretrain_mm.models import SIZES, build_model

VOCAB, CONTEXT, IMAGE = 300, 12, 32


def random_clip(size, **kwargs):
    """A named size at a small resolution with random (not zero) biases and norms, so that every
    weight's mapping shows in the embeddings."""
    torch.manual_seed(0)
    patch = 8 if size == "tiny" else 16
    model = build_model(
        "clip", size, image_size=IMAGE, vocab_size=VOCAB, context_length=CONTEXT, patch_size=patch, **kwargs
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def tokens(n, seed=0):
    """Rows as our tokenizers make them: SOT-like ids, the end-of-text id (the largest) last, then pads (0)."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, VOCAB - 1, (n, CONTEXT), generator=g)
    lengths = torch.randint(2, CONTEXT + 1, (n,), generator=g)
    positions = torch.arange(CONTEXT)[None]
    text[positions == (lengths[:, None] - 1)] = VOCAB - 1
    text[positions >= lengths[:, None]] = 0
    return text


def exported(model, tmp_path):
    """open_clip's model built and loaded the way a user would: create_model('local-dir:...')."""
    config, state = to_open_clip(model)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    return open_clip.create_model(f"local-dir:{tmp_path}").eval()


def assert_same_embeddings(ours, theirs):
    images, text = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1)), tokens(4)
    with torch.no_grad():
        for a, b in (
            (ours.encode_image(images), theirs.encode_image(images, normalize=True)),
            (ours.encode_text(text), theirs.encode_text(text, normalize=True)),
        ):
            assert (a - b).abs().max().item() <= 1e-5
        assert float(ours.logit_scale.exp()) == pytest.approx(float(theirs.logit_scale.exp()))


NUMERIC_SIZES = ("tiny", "small", "base")  # the larger ones on the meta device: seconds, not minutes


@pytest.mark.parametrize("size", NUMERIC_SIZES)
def test_every_size_gives_open_clip_the_same_embeddings(size, tmp_path):
    model = random_clip(size)
    assert_same_embeddings(model, exported(model, tmp_path))


@pytest.mark.parametrize("size", [s for s in SIZES if s not in NUMERIC_SIZES])
def test_larger_sizes_map_onto_open_clips_model_name_for_name_and_shape_for_shape(size):
    with torch.device("meta"):
        model = build_model("clip", size, image_size=IMAGE, vocab_size=VOCAB, context_length=CONTEXT, patch_size=16)
        config, state = to_open_clip(model)
        theirs = open_clip.CLIP(**config["model_cfg"]).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


@pytest.mark.parametrize(
    "args",
    [dict(loss_kind="sigmoid"), dict(vision_pool="mean"), dict(vision_norm_pre=False), dict(vision_pos_embed="sincos")],
    ids=lambda a: "-".join(map(str, a.values())),
)
def test_variants_open_clip_can_express_export_exactly(args, tmp_path):
    model = random_clip("tiny", **args)
    theirs = exported(model, tmp_path)
    assert_same_embeddings(model, theirs)
    if model.logit_bias is not None:
        assert float(theirs.logit_bias.detach()) == pytest.approx(float(model.logit_bias.detach()))


def test_open_clip_weights_come_back_to_the_same_model(tmp_path):
    model = random_clip("tiny", loss_kind="sigmoid")
    theirs = exported(model, tmp_path)
    back = build_model("clip", "tiny", image_size=IMAGE, vocab_size=VOCAB, context_length=CONTEXT, loss_kind="sigmoid")
    back.load_state_dict(from_open_clip_state(theirs.state_dict(), back))
    assert_same_embeddings(back.eval(), theirs)
    assert back.visual.patch_embed.bias.abs().max() == 0  # its value went into the position table


def test_a_conv_stem_is_refused_by_name():
    with pytest.raises(ValueError, match="vision_stem=conv"):
        to_open_clip(random_clip("tiny", vision_stem="conv"))
