"""Captions from a CoCa: greedy, beam search and top-p sampling, batched, on a KV cache.

Every method starts from the start-of-text token (and a prompt, if given) and stops a row at its
end-of-text token (or after max_length tokens). The KV cache keeps each attention layer's keys and
values, so every step runs the towers on one new position; `use_cache=False` recomputes the whole
prefix each step instead (the same logits, tests/unit/test_coca.py; the plain definition the cache
must match).
"""

from dataclasses import dataclass

import torch

from pretrain_mm.models.coca import CoCa
from pretrain_mm.models.layers import KVCache, reorder_cache

METHODS = ("greedy", "beam", "top_p")


@dataclass
class Decoding:
    """How to choose the next token (the defaults live in config.CaptionConfig, eval.caption). method: one of
    METHODS. max_length: tokens, start and end of text included (at most the model's context_length).
    beam_width, length_penalty: beam search (a finished caption's score is its log-probability /
    length ** length_penalty). top_p, temperature: nucleus sampling (the smallest set of tokens whose
    probability reaches top_p, after dividing the logits by temperature)."""

    method: str
    max_length: int
    beam_width: int = 1
    length_penalty: float = 1.0
    top_p: float = 1.0
    temperature: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"caption decoding method must be one of {METHODS}, got {self.method!r}")
        if self.max_length < 2 or self.beam_width < 1 or not 0.0 < self.top_p <= 1.0 or self.temperature <= 0:
            raise ValueError(
                f"invalid decoding settings {self}: max_length >= 2, beam_width >= 1, 0 < top_p <= 1, temperature > 0"
            )


class _Stepper:
    """Logits of the next token for a growing batch of prefixes, with or without a KV cache."""

    def __init__(self, model: CoCa, context: torch.Tensor, use_cache: bool):
        self.model, self.context = model, context
        self.cache: KVCache | None = {} if use_cache else None
        self.seen = 0  # positions already in the cache

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            return self.model.next_token_logits(tokens, self.context).float()
        logits = self.model.next_token_logits(tokens[:, self.seen :], self.context, self.cache, self.seen)
        self.seen = tokens.shape[1]
        return logits.float()

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.context = self.context.index_select(0, rows)
        if self.cache is not None:
            reorder_cache(self.cache, rows)


@torch.no_grad()
def generate(
    model: CoCa,
    images: torch.Tensor,
    sot_id: int,
    eot_id: int,
    decoding: Decoding,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    prompt: list[int] | None = None,
) -> list[list[int]]:
    """Token ids of one caption per image (B, C, H, W), start-of-text first, end-of-text last when reached.
    `generator` draws top-p's samples (None: torch's global RNG). `prompt`: ids every caption starts with
    after start-of-text (CoCa's prompted captioning: "there is a" asks for another word order)."""
    max_length = min(decoding.max_length, model.text.context_length)
    context = model.caption_context(images)
    start = torch.tensor([sot_id, *(prompt or [])], dtype=torch.long, device=images.device)
    if decoding.method == "beam":
        return _beam_search(model, context, start, eot_id, decoding, max_length, use_cache)
    step = _Stepper(model, context, use_cache)
    tokens = start.expand(images.shape[0], -1)
    done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
    while tokens.shape[1] < max_length and not bool(done.all()):
        logits = step(tokens)
        if decoding.method == "top_p":
            next_token = _sample_top_p(logits, decoding.top_p, decoding.temperature, generator)
        else:  # greedy
            next_token = logits.argmax(-1)
        next_token = torch.where(done, eot_id, next_token)  # a finished row only repeats its end
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        done |= next_token == eot_id
    return [_until_end(row, eot_id) for row in tokens.tolist()]


def _sample_top_p(logits: torch.Tensor, top_p: float, temperature: float, generator) -> torch.Tensor:
    probs = (logits / temperature).softmax(-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Drop a token when the tokens ranked above it already reach top_p (the first token always stays).
    sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) >= top_p] = 0.0
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


def _beam_search(
    model: CoCa,
    context: torch.Tensor,
    start: torch.Tensor,
    eot_id: int,
    decoding: Decoding,
    max_length: int,
    use_cache: bool,
) -> list[list[int]]:
    """Beam search over B images at once: B * W rows, the W best prefixes of each image kept every step."""
    batch, width, device = context.shape[0], decoding.beam_width, context.device
    step = _Stepper(model, context.repeat_interleave(width, dim=0), use_cache)
    tokens = start.expand(batch * width, -1)
    scores = torch.full((batch, width), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start as the same prefix: expand only the first
    done = torch.zeros(batch * width, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch * width, device=device)  # tokens after start-of-text, end included
    while tokens.shape[1] < max_length and not bool(done.all()):
        logprobs = step(tokens).log_softmax(-1)
        vocab = logprobs.shape[-1]
        # A finished beam continues only with end-of-text, at no cost: its score stays as it was.
        logprobs[done] = float("-inf")
        logprobs[done, eot_id] = 0.0
        candidates = (scores[:, :, None] + logprobs.view(batch, width, vocab)).view(batch, width * vocab)
        scores, index = candidates.topk(width, dim=-1)
        rows = (torch.arange(batch, device=device)[:, None] * width + index // vocab).view(-1)
        next_token = (index % vocab).view(-1)
        step.keep_rows(rows)
        lengths = lengths[rows] + (~done[rows]).float()
        done = done[rows] | (next_token == eot_id)
        tokens = torch.cat([tokens[rows], next_token[:, None]], dim=1)
    final = scores / (lengths.view(batch, width) ** decoding.length_penalty)
    best = torch.arange(batch, device=device) * width + final.argmax(-1)
    return [_until_end(tokens[row].tolist(), eot_id) for row in best.tolist()]


def _until_end(ids: list[int], eot_id: int) -> list[int]:
    return ids[: ids.index(eot_id) + 1] if eot_id in ids else ids
