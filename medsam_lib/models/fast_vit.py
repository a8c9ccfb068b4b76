"""SAM's ViT image encoder with ``scaled_dot_product_attention`` (the fast CUDA path for ViT-B).

The same function as segment_anything 1.0's ``ImageEncoderViT.forward``, computed from the
module's own weights (the model itself is never changed; a copy is cast to the compute dtype):

- attention is ``F.scaled_dot_product_attention(q, k, v, attn_mask=bias)``, where ``bias`` is
  SAM's decomposed relative-position term (``add_decomposed_rel_pos``: ``q . R_h`` over the key
  rows plus ``q . R_w`` over the key columns, from the unscaled queries) materialised as an
  additive (B, heads, N, N) mask. SDPA's default scale is SAM's ``head_dim ** -0.5``. With a
  floating-point mask PyTorch runs its memory-efficient kernel, never the B x heads x N x N
  softmax of the stock module in float32.
- bfloat16 weights and activations on CUDA (``dtype``); float32 works anywhere (CI checks the
  equivalence on the CPU against the stock ``Attention`` and ``ImageEncoderViT``).
- ``compile=True`` wraps the forward in ``torch.compile`` (CUDA; the first batch pays for it).

Facts from issue 10 (one H100): stock ViT-B 53-55 images/s, bf16 70, bf16 + compile 138, SDPA with
the bias as a mask + bf16 + compile 251 at batch 16 (cosine 0.99997 to stock fp32).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def supports(encoder: nn.Module) -> bool:
    """``encoder`` is segment_anything's ``ImageEncoderViT`` with stock blocks, in eval mode."""
    try:
        from segment_anything.modeling import image_encoder as sam
    except ImportError:  # pragma: no cover - segment-anything is a pinned requirement
        return False
    if type(encoder) is not sam.ImageEncoderViT or encoder.training:
        return False
    return all(type(b) is sam.Block and type(b.attn) is sam.Attention and type(b.mlp) is sam.MLPBlock
               for b in encoder.blocks)


def rel_pos_bias(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, size: tuple[int, int]) -> Tensor:
    """SAM's decomposed relative-position term as an additive mask.

    q: (B, heads, N, d) unscaled queries of an h x w token grid -> (B, heads, N, N)."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    h, w = size
    b, n_heads, n, d = q.shape
    r_h = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # (h, h, d)
    r_w = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # (w, w, d)
    r_q = q.reshape(b, n_heads, h, w, d)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w)
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n_heads, n, n)


def attention(m: nn.Module, x: Tensor) -> Tensor:
    """``segment_anything.modeling.image_encoder.Attention.forward`` with SDPA: (B, H, W, C) -> same."""
    b, h, w, _ = x.shape
    qkv = m.qkv(x).reshape(b, h * w, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, N, d)
    bias = rel_pos_bias(q, m.rel_pos_h, m.rel_pos_w, (h, w)) if m.use_rel_pos else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return m.proj(out.view(b, m.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))


def block(m: nn.Module, x: Tensor) -> Tensor:
    """``Block.forward`` with ``attention`` above."""
    from segment_anything.modeling.image_encoder import window_partition, window_unpartition

    shortcut = x
    x = m.norm1(x)
    if m.window_size > 0:
        h, w = x.shape[1], x.shape[2]
        x, pad_hw = window_partition(x, m.window_size)
        x = window_unpartition(attention(m.attn, x), m.window_size, pad_hw, (h, w))
    else:
        x = attention(m.attn, x)
    x = shortcut + x
    return x + m.mlp(m.norm2(x))


def encode(encoder: nn.Module, x: Tensor) -> Tensor:
    """(B, 3, S, S) -> (B, C, S/16, S/16), as ``ImageEncoderViT.forward``; ``supports(encoder)`` must hold."""
    x = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for blk in encoder.blocks:
        x = block(blk, x)
    return encoder.neck(x.permute(0, 3, 1, 2))


class FastViTEncoder:
    """A copy of a stock ViT encoder in ``dtype``, run through ``encode`` (optionally compiled)."""

    def __init__(self, encoder: nn.Module, dtype: torch.dtype = torch.bfloat16, compile: bool = False):
        if not supports(encoder):
            raise ValueError("FastViTEncoder needs segment_anything's stock ImageEncoderViT in eval mode")
        self.dtype = dtype
        self.encoder = copy.deepcopy(encoder).to(dtype).eval() if dtype != next(encoder.parameters()).dtype \
            else encoder
        self._forward = torch.compile(self._run, dynamic=False) if compile else self._run

    def _run(self, x: Tensor) -> Tensor:
        return encode(self.encoder, x)

    @torch.inference_mode()
    def __call__(self, x: Tensor) -> Tensor:
        return self._forward(x.to(self.dtype))
