"""Masked language modelling (BERT, with RoBERTa's dynamic masks): the masking, the prediction head, and the
text-only model `+exp=mlm` trains; CLIP and CoCa take the head with `mlm=True` (loss.mlm_weight, as FLAVA).

Masking: of a caption's tokens (never its start-of-text, end-of-text or padding) each is chosen with
probability `rate` (15%); a chosen token becomes the mask token 80% of the time, a random token 10%, and
stays as it is 10%; the loss predicts every chosen token and only those. The trainer draws a new mask
every time a batch is seen (RoBERTa), from a generator seeded by the run's seed, the step and the rank
(train/objectives.py): reproducible, the same in GradCache's two passes and after an exact resume.

The mask token: neither OpenAI CLIP's BPE nor ours has one, and adding it to the tokenizer would make it
the largest id, where CLIP's rule (and the tokenizer's check) wants end-of-text. So its id is the one
after the tokenizer's last, `tokenizer.vocab_size`, and a model that learns it has one more row in its
token embedding (builders.model_vocab_size); the tokenizer files and every other id stay as they are.
The text tower runs bidirectionally here (TextTransformer.forward_tokens(bidirectional=True)): each
position sees the whole caption, none of the padding.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from pretrain_mm.models.layers import no_weight_decay_names
from pretrain_mm.models.text import TextTransformer, caption_tokens, text_tower
from pretrain_mm.ops import IGNORE  # the positions whose token is not predicted

MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen tokens (BERT); the remaining 10% stay unchanged


@dataclass(frozen=True)
class MaskingRule:
    """What masking needs of the tokenizer (builders.masking_rule): its special ids, the mask id, and the
    ids random replacements come from (the tokenizer's, specials excepted)."""

    rate: float
    mask_id: int
    vocab_size: int  # the tokenizer's
    pad_id: int
    sot_id: int
    eot_id: int

    def __post_init__(self):
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"loss.mlm_mask_rate must be in (0, 1), got {self.rate}")


def maskable(text: torch.Tensor, rule: MaskingRule) -> torch.Tensor:
    """(B, T) bool: the caption tokens masking may choose — after start-of-text, before each row's
    end-of-text (its last non-pad position; a pad id inside a caption is a caption token)."""
    return caption_tokens(text, rule.pad_id)


def mask_tokens(
    text: torch.Tensor, rule: MaskingRule, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) for token ids (B, T): inputs with the chosen tokens masked, replaced or kept,
    targets holding the original id at the chosen positions and IGNORE elsewhere."""
    chosen = maskable(text, rule) & (torch.rand(text.shape, generator=generator, device=text.device) < rule.rate)
    # One draw decides what a chosen token becomes: [0, 0.8) mask, [0.8, 0.9) random, [0.9, 1) kept.
    fate = torch.rand(text.shape, generator=generator, device=text.device)
    to_mask = chosen & (fate < MASK_SHARE)
    to_random = chosen & (fate >= MASK_SHARE) & (fate < MASK_SHARE + RANDOM_SHARE)
    inputs = text.masked_fill(to_mask, rule.mask_id)
    inputs = torch.where(to_random, random_tokens(text.shape, rule, generator, text.device), inputs)
    return inputs, text.masked_fill(~chosen, IGNORE)


def random_tokens(shape, rule: MaskingRule, generator: torch.Generator | None, device) -> torch.Tensor:
    """Ids drawn uniformly from the tokenizer's, the special ones (pad, start, end of text) excepted."""
    specials = torch.tensor(sorted({rule.pad_id, rule.sot_id, rule.eot_id}), device=device)
    # Draw from vocab_size - len(specials) values, then step over each special id in increasing order.
    ids = torch.randint(rule.vocab_size - len(specials), shape, generator=generator, device=device)
    for special in specials:
        ids = ids + (ids >= special).long()
    return ids


class MlmHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, then a linear map to the vocabulary (mask id included)."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.dense, self.act, self.norm = nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=1e-5)
        self.decoder = nn.Linear(width, vocab_size)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for linear in (self.dense, self.decoder):
            nn.init.normal_(linear.weight, std=0.02)  # BERT's initializer_range
            nn.init.zeros_(linear.bias)
        self.norm.reset_parameters()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden))))


def masked_token_logits(text: TextTransformer, head: MlmHead, inputs: torch.Tensor) -> torch.Tensor:
    """Logits (B, T', vocab) of masked token ids (B, T), T' the batch's longest caption (the padding columns
    after it are cut: their targets are all IGNORE), through the text tower run bidirectionally."""
    inputs = text.trim(inputs)
    return head(text.forward_tokens(inputs, bidirectional=True))


class MaskedLanguageModel(nn.Module):
    """The text tower alone, trained by masked language modelling (`+exp=mlm`). Its `text` is CLIP's text
    tower (the same class, names and shapes); `text.proj`, CLIP's projection, is frozen here.

    Arguments: CLIP's text ones (vocab_size, which counts the mask id, context_length, text_width,
    text_depth, text_heads, mlp_ratio, pad_id, drop_path_rate, embed_dim: the projection's width)."""

    def __init__(
        self,
        vocab_size: int,
        context_length: int = 77,
        text_width: int = 512,
        text_depth: int = 12,
        text_heads: int = 8,
        mlp_ratio: float = 4.0,
        pad_id: int = 0,
        drop_path_rate: float = 0.0,
        embed_dim: int = 512,
    ):
        super().__init__()
        self.text = text_tower(
            vocab_size, context_length, text_width, text_depth, text_heads, mlp_ratio, embed_dim, pad_id, drop_path_rate
        )
        self.mlm_head = MlmHead(text_width, vocab_size)
        # CLIP's projection has nothing to learn here: frozen, it stays out of the optimiser (whose state a
        # resume must find for every parameter it trains) and keeps CLIP's names for loading the tower.
        self.text.proj.requires_grad_(False)

    @torch.no_grad()
    def init_weights(self) -> None:
        self.text.init_weights()
        self.mlm_head.init_weights()

    def masked_token_logits(self, mlm_text: torch.Tensor) -> torch.Tensor:
        """Logits (B, T', vocab) of masked token ids (B, T) (see masked_token_logits)."""
        return masked_token_logits(self.text, self.mlm_head, mlm_text)

    def forward(self, mlm_text: torch.Tensor) -> dict:
        return {"mlm_logits": self.masked_token_logits(mlm_text)}

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self)
