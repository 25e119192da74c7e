"""CoCa (Yu et al. 2022, "Contrastive Captioners"): CLIP's two towers plus a multimodal text decoder that
reads the image tokens and predicts the caption's next token.

    image tower ──tokens──┬─ class token → projection ─────────────┐
                          └─ (attentional pooling) ──┐             ├─ contrastive loss (the fused op)
    caption ─ text tower ─┬─ end-of-text → projection ───────────────┘
       (causal, unimodal) └─ hidden states ─ decoder blocks (causal self-attention,
                                             cross-attention to the image) ─ LM head ─ next-token loss

The text tower is CLIP's, so its hidden state at position t has seen tokens 0 .. t only: the decoder
can predict token t + 1 from it without a second embedding of the caption. Generation (greedy, beam,
top-p; models/generate.py) runs both the text tower and the decoder one position at a time on a
KVCache.
"""

import torch
import torch.nn as nn

from pretrain_mm.models.clip import CLIP
from pretrain_mm.models.layers import Attention, CrossAttention, KVCache, Mlp, drop_path, text_init_stds
from pretrain_mm.ops import IGNORE  # the caption targets after a caption's end


class DecoderBlock(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the image context, MLP (CoCa's multimodal layer)."""

    def __init__(self, dim: int, num_heads: int, context_dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, causal=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, num_heads, context_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x), cache), self.drop_path, self.training)
        x = x + drop_path(self.cross(self.norm_cross(x), context, cache), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class AttentionalPooler(nn.Module):
    """CoCa's task-specific pooling: `num_queries` learned queries attend to the image tokens, (B, n, width)."""

    def __init__(self, width: int, context_dim: int, num_heads: int, num_queries: int):
        super().__init__()
        self.queries = nn.Parameter(torch.empty(num_queries, width))
        self.norm_context = nn.LayerNorm(context_dim)
        self.attn = CrossAttention(width, num_heads, context_dim)
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.queries, std=width**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        queries = self.queries.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        return self.norm(self.attn(queries, self.norm_context(tokens)))


class CoCa(CLIP):
    """CLIP plus a captioning decoder. Takes every CLIP argument, and:

        caption_depth, caption_heads: the multimodal decoder's blocks; its width is the text tower's.
        caption_pool_queries: 0 (default): the decoder attends to every image token (class token and
            patches, after the image tower's final norm); n > 0: to n tokens of an AttentionalPooler,
            as the paper (256 there; for long token sequences, where it saves the decoder's cross-attention).

    `forward` adds caption_logits (B, T - 1, vocab) and caption_targets (B, T - 1) to CLIP's outputs:
    position t predicts token t + 1, up to the caption's end-of-text token (the loss,
    train/objectives.py, ignores the IGNORE targets after it).
    """

    def __init__(
        self,
        vocab_size: int,
        caption_depth: int = 2,
        caption_heads: int = 4,
        caption_pool_queries: int = 0,
        **clip_args,
    ):
        super().__init__(vocab_size, **clip_args)
        width, context_dim = self.text.width, self.visual.width
        self.pooler = (
            AttentionalPooler(width, context_dim, caption_heads, caption_pool_queries) if caption_pool_queries else None
        )
        if self.pooler is not None:
            context_dim = width
        # Named decoder_blocks: the trainer shards, checkpoints and compiles each (train/parallelize.py).
        rate = clip_args.get("drop_path_rate", 0.0)
        self.decoder_blocks = nn.ModuleList(
            DecoderBlock(
                width, caption_heads, context_dim, clip_args.get("mlp_ratio", 4.0), rate * i / max(caption_depth - 1, 1)
            )
            for i in range(caption_depth)
        )
        self.decoder_norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self._init_decoder_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        super().init_weights()
        self._init_decoder_weights()

    @torch.no_grad()
    def _init_decoder_weights(self) -> None:
        """open_clip's text init for the decoder (residual-out weights scaled down with depth), zero biases."""
        width = self.text.width
        attn_std, proj_std, fc_std = text_init_stds(width, max(len(self.decoder_blocks), 1))
        for module in [*self.decoder_blocks, *([self.pooler] if self.pooler is not None else [])]:
            for m in module.modules():
                if isinstance(m, nn.LayerNorm):
                    m.reset_parameters()
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=attn_std)
                    nn.init.zeros_(m.bias)
        for block in self.decoder_blocks:
            assert isinstance(block, DecoderBlock)
            for linear, std in (
                (block.attn.proj, proj_std),
                (block.cross.proj, proj_std),
                (block.mlp.fc1, fc_std),
                (block.mlp.fc2, proj_std),
            ):
                nn.init.normal_(linear.weight, std=std)
        if self.pooler is not None:
            nn.init.normal_(self.pooler.queries, std=width**-0.5)
        self.decoder_norm.reset_parameters()
        nn.init.normal_(self.lm_head.weight, std=attn_std)

    def image_context(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the decoder attends to, from the image tower's normalised tokens (B, 1 + L, vision_width)."""
        return tokens if self.pooler is None else self.pooler(tokens)

    def decode(self, hidden: torch.Tensor, context: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Next-token logits (B, t, vocab) from the text tower's hidden states (B, t, width) and the image context."""
        for block in self.decoder_blocks:
            hidden = block(hidden, context, cache)
        return self.lm_head(self.decoder_norm(hidden))

    def forward(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        neg_text: torch.Tensor | None = None,
        mlm_text: torch.Tensor | None = None,
    ) -> dict:
        """CLIP's outputs (image_features, text_features, logit_scale, logit_bias; with neg_text,
        neg_text_features; CLIP.head_outputs), caption_logits (B, T' - 1, vocab) and caption_targets
        (B, T' - 1), T' the batch's longest caption. One pass of each tower serves both losses."""
        tokens = self.visual.forward_features(images)
        text = self.text.trim(text)
        hidden = self.text.forward_tokens(text)
        text_features = self.text.proj(self.text.pool(hidden, text))
        out = {
            "image_features": nn.functional.normalize(self.visual.head(self.visual.pool(tokens)), dim=-1),
            "text_features": nn.functional.normalize(text_features, dim=-1),
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
            "caption_logits": self.decode(hidden[:, :-1], self.image_context(tokens)),
            "caption_targets": self.caption_targets(text),
        }
        if neg_text is not None:
            out["neg_text_features"] = self.encode_text(neg_text)
        return self.head_outputs(out, text, mlm_text)

    def caption_targets(self, text: torch.Tensor) -> torch.Tensor:
        """(B, T - 1): the token each position predicts, IGNORE after the row's end-of-text (its last non-pad
        token: a pad id that is also a real token, as CLIP's BPE's 0, stays a target inside the caption)."""
        positions = torch.arange(1, text.shape[1], device=text.device)
        after_end = positions[None, :] > self.text.eot_positions(text)[:, None]
        return text[:, 1:].masked_fill(after_end, IGNORE)

    # Generation, one position at a time (models/generate.py drives these).
    def caption_context(self, images: torch.Tensor) -> torch.Tensor:
        """The image context a caption of `images` is decoded against (computed once per caption)."""
        return self.image_context(self.visual.forward_features(images))

    def next_token_logits(
        self, tokens: torch.Tensor, context: torch.Tensor, cache: KVCache | None = None, start: int = 0
    ) -> torch.Tensor:
        """Logits (B, vocab) of the token after `tokens` (B, t). With a cache, `tokens` are the positions
        start .. start + t - 1 and the cache holds 0 .. start - 1 (of both the text tower and the decoder);
        without, `tokens` is the whole prefix (start = 0)."""
        hidden = self.text.forward_tokens(tokens, cache, start)
        return self.decode(hidden, context, cache)[:, -1]
