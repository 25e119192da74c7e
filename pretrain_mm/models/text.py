"""CLIP's text transformer: causal pre-norm blocks, features at the last non-pad token, a projection."""

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn as nn

from pretrain_mm.models.layers import Block, KVCache, make_blocks, no_weight_decay_names, text_init_stds


def last_non_pad(text: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B,) index of the last non-pad token of each row of ids (B, T), where the end-of-text token stands
    (0 for a row of pads only): the text tower's and the MLM masking's one rule for where a caption ends."""
    positions = torch.arange(text.shape[1], device=text.device).expand_as(text)
    return torch.where(text != pad_id, positions, 0).amax(dim=1)


def caption_tokens(text: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, T) bool: each row's own caption tokens, after start-of-text and before its end-of-text (the last
    non-pad position); a pad id inside a caption is a caption token. What MLM may mask and the word head reads."""
    positions = torch.arange(text.shape[1], device=text.device)
    return (positions > 0) & (positions < last_non_pad(text, pad_id)[:, None])


class TextTransformer(nn.Module):
    """Token + learned position embeddings, causal Blocks, final LayerNorm, pooling, projection.

    Arguments:
        vocab_size: number of token ids.
        context_length: longest token sequence (the size of the position table).
        width, depth, num_heads, mlp_ratio: the transformer shape.
        output_dim: width of the linear projection (no bias) after pooling, CLIP's embed dim.
        pad_id: the padding id. The sequence's features are read at its LAST NON-PAD position,
            which our tokenizer fills with the end-of-text token. OpenAI CLIP uses the argmax of
            the ids instead, which finds the same place only while EOT is the largest id; this
            rule does not depend on the id order. A row of pads only is read at position 0.
        drop_path_rate: stochastic depth of the last block.

    Causality makes the features at a position blind to everything after it, so padding never
    changes the features of the text before it.
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int = 77,
        width: int = 512,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        output_dim: int = 512,
        pad_id: int = 0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.context_length, self.width, self.depth, self.pad_id = context_length, width, depth, pad_id
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        # CLIP's text LayerNorms use eps 1e-5 (PyTorch's default), the ViT's 1e-6 (timm / MAE).
        self.blocks = make_blocks(width, depth, num_heads, mlp_ratio, drop_path_rate, causal=True, norm_eps=1e-5)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, output_dim, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """open_clip's text init: residual-out weights scaled down with depth, zero biases."""
        attn_std, proj_std, fc_std = text_init_stds(self.width, self.depth)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for block in cast(Iterable[Block], self.blocks):  # make_blocks' Blocks
            for linear, std in (
                (block.attn.qkv, attn_std),
                (block.attn.proj, proj_std),
                (block.mlp.fc1, fc_std),
                (block.mlp.fc2, proj_std),
            ):
                nn.init.normal_(linear.weight, std=std)
                nn.init.zeros_(linear.bias)
            for norm in (block.norm1, block.norm2):
                nn.init.ones_(norm.weight)
                nn.init.zeros_(norm.bias)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        nn.init.normal_(self.proj.weight, std=attn_std)

    def forward_tokens(
        self, text: torch.Tensor, cache: KVCache | None = None, start: int = 0, bidirectional: bool = False
    ) -> torch.Tensor:
        """Normalised hidden states (B, T, width) of token ids (B, T) at positions start .. start + T - 1,
        start + T <= context_length. Generation passes a KVCache holding positions 0 .. start - 1.
        bidirectional: every position attends to the whole text up to its end-of-text, none of the padding
        after it (masked language modelling, models/mlm.py); otherwise causal."""
        if text.dim() != 2 or start + text.shape[1] > self.context_length:
            raise ValueError(
                f"expected token ids (B, T) with T <= context_length {self.context_length}, got {tuple(text.shape)}"
                + (f" after {start} positions" if start else "")
            )
        x = self.token_embedding(text) + self.positional_embedding[start : start + text.shape[1]]
        keys = None
        if bidirectional:
            positions = torch.arange(text.shape[1], device=text.device)
            keys = positions[None, :] <= self.eot_positions(text)[:, None]
        for block in self.blocks:
            x = block(x, cache, keys)
        return self.norm(x)

    def eot_positions(self, text: torch.Tensor) -> torch.Tensor:
        """(B,) index of the last non-pad token of each row (0 for a row of pads only)."""
        return last_non_pad(text, self.pad_id)

    def pool(self, hidden: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, width): the hidden state at each row's end-of-text (last non-pad) position."""
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), self.eot_positions(text)]

    def trim(self, text: torch.Tensor) -> torch.Tensor:
        """`text` without the padding columns after the batch's longest text. Causality makes the pooled
        end-of-text features (and every position's hidden state) blind to the columns after it, so the
        blocks give the same features at a cost that follows the captions' length, not context_length."""
        if text.device.type == "meta":  # (shapes-only runs on meta tensors have no ids to look at)
            return text
        return text[:, : int(self.eot_positions(text).max()) + 1]

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Projected text features (B, output_dim), not normalised, of the trimmed text."""
        text = self.trim(text)
        return self.proj(self.pool(self.forward_tokens(text), text))

    def no_weight_decay(self) -> set[str]:
        """ndim <= 1 parameters and positional_embedding; token_embedding is decayed (open_clip)."""
        return no_weight_decay_names(self)


def text_tower(
    vocab_size: int,
    context_length: int,
    text_width: int,
    text_depth: int,
    text_heads: int,
    mlp_ratio: float,
    embed_dim: int,
    pad_id: int,
    drop_path_rate: float,
) -> TextTransformer:
    """CLIP's text tower from CLIP's argument names (CLIP and CoCa, and the mlm kind's MaskedLanguageModel)."""
    return TextTransformer(
        vocab_size=vocab_size,
        context_length=context_length,
        width=text_width,
        depth=text_depth,
        num_heads=text_heads,
        mlp_ratio=mlp_ratio,
        output_dim=embed_dim,
        pad_id=pad_id,
        drop_path_rate=drop_path_rate,
    )
