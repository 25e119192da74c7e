"""CoCa: a causal decoder, a captioning loss that ignores padding, KV-cached generation equal to uncached."""

import pytest
import torch
import torch.nn.functional as F

from helpers.tiny_models import VOCAB, captions, images, tiny_coca
from pretrain_mm.config import LossConfig
from pretrain_mm.models.generate import Decoding, generate
from pretrain_mm.models.layers import KVCache
from pretrain_mm.train.objectives import CocaObjective

SOT, EOT = 1, VOCAB - 1
pytestmark = pytest.mark.usefixtures("one_thread")


def objective(**kwargs):
    return CocaObjective(LossConfig(impl="reference", **kwargs))


@pytest.mark.parametrize("pool_queries", [0, 5], ids=["image_tokens", "attentional_pool"])
def test_changing_a_later_token_never_changes_earlier_logits(pool_queries):
    model = tiny_coca(caption_pool_queries=pool_queries).double().eval()
    image, text = images(2).double(), captions(2, min_len=16)  # full rows: no end cut moves
    logits = model(image, text)["caption_logits"]
    for t in (0, 6, 13):
        changed = text.clone()
        changed[:, t + 1] = (changed[:, t + 1] % (VOCAB - 2)) + 1
        other = model(image, changed)["caption_logits"]
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-12)
        assert not torch.allclose(other[:, t + 1 :], logits[:, t + 1 :])  # it does change what follows


def test_the_image_changes_the_caption_logits():
    model = tiny_coca().double().eval()
    text = captions(2)
    a = model(images(2, seed=1).double(), text)["caption_logits"]
    b = model(images(2, seed=5).double(), text)["caption_logits"]
    assert not torch.allclose(a, b)


def test_caption_loss_is_the_mean_over_real_tokens_and_ignores_padding():
    model = tiny_coca().double()
    batch = {"image": images(4).double(), "text": captions(4)}  # rows of 3 .. 16 tokens, padded with 0
    obj = objective(caption_weight=1.0)
    out = obj.forward(model, batch)
    caption_term = obj.loss(out) - obj.coupled_loss(out)
    # Plainly: every position before each row's last non-pad token predicts the next token; nothing after.
    raw = model(batch["image"], batch["text"])
    total, count = 0.0, 0
    for row in range(4):
        end = int((batch["text"][row] != 0).nonzero().max())
        logits = raw["caption_logits"][row, :end]
        total += F.cross_entropy(logits, batch["text"][row, 1 : end + 1], reduction="sum").item()
        count += end
    assert caption_term.item() == pytest.approx(total / count, rel=1e-12)
    assert int(out["caption_tokens"].sum()) == count

    # More padding columns change neither the loss nor the gradient.
    loss = obj(model, batch)
    loss.backward()
    grad = model.lm_head.weight.grad.clone()
    model.zero_grad()
    wider = torch.cat([batch["text"], torch.zeros(4, 8, dtype=torch.long)], dim=1)
    model.text.context_length = (
        model.text.positional_embedding.shape[0] + 8
    )  # (positions past the table are never read)
    again = obj(model, {**batch, "text": wider})
    torch.testing.assert_close(again, loss, rtol=1e-12, atol=0)
    again.backward()
    torch.testing.assert_close(model.lm_head.weight.grad, grad, rtol=1e-12, atol=0)


def test_a_pad_id_inside_the_caption_is_still_a_target():
    """CLIP's BPE has no pad token: pad id 0 is '!'. A 0 before the end-of-text token is a word to predict."""
    model = tiny_coca().double()
    text = captions(2, min_len=8)
    text[:, 3] = 0
    targets = model(images(2).double(), text)["caption_targets"]
    assert (targets[:, 2] == 0).all()  # position 2 predicts the 0 at position 3


def test_label_smoothing_raises_the_loss_of_a_confident_model():
    model = tiny_coca().double()
    batch = {"image": images(4).double(), "text": captions(4)}
    plain, smoothed = objective()(model, batch), objective(caption_label_smoothing=0.1)(model, batch)
    assert smoothed.item() != pytest.approx(plain.item(), rel=1e-6)


def step_logits(model, tokens, cached: bool):
    """The next-token logits after each prefix of `tokens`, one position at a time on a cache, or recomputed."""
    context = model.caption_context(images(tokens.shape[0]))
    cache: KVCache = {}
    out = []
    for t in range(1, tokens.shape[1] + 1):
        if cached:
            out.append(model.next_token_logits(tokens[:, t - 1 : t], context, cache, t - 1))
        else:
            out.append(model.next_token_logits(tokens[:, :t], context))
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("pool_queries", [0, 5], ids=["image_tokens", "attentional_pool"])
def test_cached_step_logits_equal_recomputed(pool_queries):
    model = tiny_coca(caption_pool_queries=pool_queries).eval()
    tokens = captions(3, min_len=16)
    torch.testing.assert_close(
        step_logits(model, tokens, True), step_logits(model, tokens, False), rtol=1e-5, atol=1e-5
    )


def test_a_cache_takes_several_new_positions_at_once():
    model = tiny_coca().eval()
    tokens = captions(2, min_len=16)
    context = model.caption_context(images(2))
    cache: KVCache = {}
    model.next_token_logits(tokens[:, :5], context, cache, 0)
    last = model.next_token_logits(tokens[:, 5:11], context, cache, 5)
    torch.testing.assert_close(last, model.next_token_logits(tokens[:, :11], context), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_cached_generation_equals_uncached(method):
    model = tiny_coca().eval()
    decoding = Decoding(method, max_length=12, beam_width=3)
    runs = [
        generate(model, images(4), SOT, EOT, decoding, use_cache=cache, generator=torch.Generator().manual_seed(0))
        for cache in (True, False)
    ]
    assert runs[0] == runs[1]
    assert all(row[0] == SOT and 1 < len(row) <= 12 for row in runs[0])


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_a_prompt_starts_every_caption_and_the_cache_takes_it_at_once(method):
    model = tiny_coca().eval()
    decoding = Decoding(method, max_length=12, beam_width=3)
    runs = [generate(model, images(3), SOT, EOT, decoding, use_cache=c, prompt=[5, 9, 2]) for c in (True, False)]
    assert runs[0] == runs[1]
    assert all(row[:4] == [SOT, 5, 9, 2] for row in runs[0])


def test_beam_search_of_width_one_is_greedy():
    model = tiny_coca().eval()
    greedy = generate(model, images(4), SOT, EOT, Decoding("greedy", max_length=12))
    assert generate(model, images(4), SOT, EOT, Decoding("beam", beam_width=1, max_length=12)) == greedy


def test_beam_search_finds_a_caption_at_least_as_likely_as_greedy():
    """The score beam search maximises (log p / length ** 0 with length_penalty=0) is never below greedy's."""
    model = tiny_coca().double().eval()
    img = images(3).double()

    def log_prob(row, i):
        tokens = torch.tensor([row])
        logits = model(img[i : i + 1], torch.cat([tokens, torch.zeros(1, 1, dtype=torch.long)], 1))["caption_logits"]
        return float(logits[0, : len(row) - 1].log_softmax(-1).gather(-1, tokens[0, 1:, None]).sum().detach())

    # Stop at EOT or at max_length: both searches compare captions of the same rule.
    greedy = generate(model, img, SOT, EOT, Decoding("greedy", max_length=6))
    beam = generate(model, img, SOT, EOT, Decoding("beam", beam_width=4, max_length=6, length_penalty=0.0))
    for i in range(3):
        assert log_prob(beam[i], i) >= log_prob(greedy[i], i) - 1e-9


def test_top_p_keeps_only_the_nucleus():
    from pretrain_mm.models.generate import _sample_top_p

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = {int(_sample_top_p(logits, 0.7, 1.0, torch.Generator().manual_seed(s))) for s in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.7 needs the second; 0.8 >= 0.7 stops there
    draws = {int(_sample_top_p(logits, 1.0, 1.0, torch.Generator().manual_seed(s))) for s in range(400)}
    assert draws == {0, 1, 2, 3}


def test_bad_decoding_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="method"):
        Decoding("sample", max_length=8)
    with pytest.raises(ValueError, match="top_p"):
        Decoding("top_p", max_length=8, top_p=0.0)


@pytest.mark.parametrize("choice", [["model=coca"], ["+exp=coca"]], ids=["model", "exp"])
def test_coca_composes_with_your_shards(choice):
    from helpers.configs import compose_config
    from pretrain_mm.builders import model_from_config
    from pretrain_mm.models import CoCa

    cfg = compose_config(*choice, "data=wds", "data.train.urls=/data/mine/0.tar", "data.tokenizer=clip")
    assert cfg.model.kind == "coca" and cfg.data.name == "wds" and cfg.data.train.urls == "/data/mine/0.tar"
    model = model_from_config(cfg, vocab_size=49408)  # CLIP's BPE
    assert isinstance(model, CoCa) and model.lm_head.out_features == 49408
