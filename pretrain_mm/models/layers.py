"""Transformer pieces shared by the towers: pre-norm Block, drop path, sin-cos positions, masking, init."""

import torch
import torch.nn as nn
import torch.nn.functional as F

# Parameters named so (the last component of the name) get no weight decay, on top of every
# parameter with ndim <= 1 (biases, LayerNorm affines, logit_scale, logit_bias). Token
# embeddings are decayed, as in open_clip.
NO_DECAY_NAMES = frozenset(
    {"pos_embed", "cls_token", "mask_token", "positional_embedding", "logit_scale", "logit_bias"}
)


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Names of `module`'s parameters that an optimiser should not decay (see NO_DECAY_NAMES)."""
    return {name for name, p in module.named_parameters() if p.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES}


def text_init_stds(width: int, depth: int) -> tuple[float, float, float]:
    """open_clip's init of a text transformer's linears: the std of attention inputs, of residual outputs
    (attention and MLP out, shrinking with depth) and of MLP inputs."""
    attn_std = width**-0.5
    return attn_std, attn_std * (2 * depth) ** -0.5, (2 * width) ** -0.5


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the whole residual branch of a random fraction p of the samples."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


# A generation's memory: per attention layer (the module is the key), the keys and values
# (B, heads, positions, head_dim) it has computed so far. Beam search reorders its rows (reorder_cache).
KVCache = dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]


def reorder_cache(cache: KVCache, rows: torch.Tensor) -> None:
    """Keep row rows[i] of every cached tensor as row i (a beam search's surviving hypotheses)."""
    for module, (k, v) in cache.items():
        cache[module] = (k.index_select(0, rows), v.index_select(0, rows))


class Attention(nn.Module):
    """Multi-head self-attention through F.scaled_dot_product_attention (flash / memory-efficient kernels)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, causal: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.causal = num_heads, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, keys: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, t, width). With a cache (generation), x holds the t positions after those the cache has
        seen: they attend to the cached keys and values and their own, which the cache then keeps.
        keys (B, t) bool, True where a position may be attended: given, attention is bidirectional over
        those positions whatever `causal` (a text tower's masked-language-modelling mode)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if keys is not None:
            assert cache is None, "bidirectional attention is for whole sequences, not generation"
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :])
            return self.proj(x.transpose(1, 2).reshape(b, t, d))
        past = 0
        if cache is not None:
            if self in cache:
                k, v = (torch.cat([old, new], dim=2) for old, new in zip(cache[self], (k, v)))
            cache[self] = (k, v)
            past = k.shape[2] - t
        if not (self.causal and past and t > 1):
            # One new position sees everything before it: no mask. Without a past, the plain causal mask.
            x = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal and t > 1)
        else:  # several new positions after a past: position past + i sees keys 0 .. past + i
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(x.transpose(1, 2).reshape(b, t, d))


class CrossAttention(nn.Module):
    """Multi-head attention of tokens (B, t, width) to a context (B, s, context_width), e.g. a text
    decoder's to image tokens. With a cache, the context's keys and values are computed once."""

    def __init__(self, dim: int, num_heads: int, context_dim: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, t, d = x.shape
        heads, head_dim = self.num_heads, d // self.num_heads
        q = self.q(x).view(b, t, heads, head_dim).transpose(1, 2)
        if cache is not None and self in cache:
            k, v = cache[self]
        else:
            s = context.shape[1]
            k, v = self.kv(context).view(b, s, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
            if cache is not None:
                cache[self] = (k, v)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    """Two linears with a GELU between, hidden width = mlp_ratio * width."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    Self-contained (forward takes only the tokens, and when generating a KVCache) so that the trainer
    can wrap each block with FSDP2 `fully_shard` and activation checkpointing. `causal` makes it a
    text block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        causal: bool = False,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, causal=causal)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, keys: torch.Tensor | None = None) -> torch.Tensor:
        """keys: see Attention (bidirectional attention over those positions)."""
        x = x + drop_path(self.attn(self.norm1(x), cache, keys), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


def make_blocks(
    width: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.0,
    causal: bool = False,
    norm_eps: float = 1e-6,
) -> nn.ModuleList:
    """`depth` blocks whose drop-path rate rises linearly from 0 to drop_path_rate (as timm/MAE)."""
    rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(
        Block(width, num_heads, mlp_ratio, drop_path=r, causal=causal, norm_eps=norm_eps) for r in rates
    )


def sincos_pos_embed_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[sin(pos * w_k), cos(pos * w_k)] with w_k = 10000^(-k / (dim/2)): (len(positions), dim)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """MAE's fixed 2-D position embedding, computed on the CPU in float64: (grid_size**2 [+1], dim).

    Patch (row r, column c) sits at index r * grid_size + c; the first dim/2 channels encode c,
    the last dim/2 encode r (MAE's layout). With cls_token a zero row is put first.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64, device="cpu")
    rows, cols = coords.repeat_interleave(grid_size), coords.repeat(grid_size)
    emb = torch.cat([sincos_pos_embed_1d(dim // 2, cols), sincos_pos_embed_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, dim), emb], dim=0)
    return emb


def random_masking(
    batch_size: int, num_patches: int, mask_ratio: float, device=None, noise: torch.Tensor | None = None
):
    """MAE's per-sample random masking by argsort of uniform noise.

    Returns ids_keep (B, K) – the kept patches, in shuffled order –, mask (B, L) with 0 kept and
    1 removed, in the original patch order, and ids_restore (B, L), the permutation that
    unshuffles [kept, removed] back to patch order. K = max(1, round(L * (1 - mask_ratio))).
    `noise` (B, L) replaces the random draw (tests, reproducible masks).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {mask_ratio}")
    num_keep = max(1, round(num_patches * (1.0 - mask_ratio)))
    if noise is None:
        noise = torch.rand(batch_size, num_patches, device=device)
    ids_shuffle = noise.argsort(dim=1)  # ascending: the smallest noise values are kept
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch_size, num_patches, device=noise.device)
    mask[:, :num_keep] = 0
    return ids_shuffle[:, :num_keep], mask.gather(1, ids_restore), ids_restore


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x[b, ids[b, k], :] for tokens x (B, L, D) and indices ids (B, K): (B, K, D)."""
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@torch.no_grad()
def init_vit_weights(module: nn.Module) -> None:
    """timm/MAE init for a ViT-style tree: linears trunc-normal(0.02) with zero bias, LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def init_clip_vit_weights(module: nn.Module) -> None:
    """What open_clip's ViT gets (it defines no init of its own): PyTorch's default init of every
    linear and conv, then, as nn.MultiheadAttention, xavier-uniform qkv with zero biases and a
    zero output bias. LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)):
            m.reset_parameters()
    for m in module.modules():  # after the layers inside it have been reset
        if isinstance(m, Attention):
            nn.init.xavier_uniform_(m.qkv.weight)
            for bias in (m.qkv.bias, m.proj.bias):
                if bias is not None:
                    nn.init.zeros_(bias)


@torch.no_grad()
def init_sincos_(buffer: torch.Tensor, grid_size: int, cls_token: bool) -> None:
    """Fill a (1, T, D) position buffer with sincos_pos_embed_2d (works on meta and any device)."""
    buffer.copy_(sincos_pos_embed_2d(buffer.shape[-1], grid_size, cls_token).unsqueeze(0))
