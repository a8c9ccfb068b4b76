"""The one change MedSAM's fork makes to SAM's mask decoder, applied to PyPI segment-anything 1.0.

``segment_anything.modeling.MaskDecoder.predict_masks`` repeats the image embeddings once per
prompt (``repeat_interleave(image_embeddings, n_prompts)``). That is right for one image with many
boxes, and wrong for a batch of B images with one box each: it builds B x B pairs and fails.
MedSAM's fork skips the repeat when the counts match. We rebind ``predict_masks`` on the decoder
instance's class (a subclass made once per decoder class) instead of vendoring the package.
"""
from __future__ import annotations

import torch
from torch import nn


def _predict_masks(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                   sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor):
    """SAM's ``predict_masks`` with the per-prompt repeat only when one image serves many prompts.

    image_embeddings: (1 or N, C, h, w); sparse: (N, T, C); dense: (N, C, h, w).
    Returns masks (N, num_mask_tokens, 4h, 4w) and IoU predictions (N, num_mask_tokens).
    """
    output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
    n_prompts = tokens.shape[0]
    if image_embeddings.shape[0] == n_prompts:
        src = image_embeddings  # a batch of images, one prompt each (the MedSAM fork's fix)
    elif image_embeddings.shape[0] == 1:
        src = torch.repeat_interleave(image_embeddings, n_prompts, dim=0)
    else:
        raise ValueError(f"{image_embeddings.shape[0]} image embeddings for {n_prompts} prompts: "
                         "give one image, or one prompt per image")
    src = src + dense_prompt_embeddings
    pos_src = torch.repeat_interleave(image_pe, n_prompts, dim=0)
    b, c, h, w = src.shape

    hs, src = self.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1:(1 + self.num_mask_tokens), :]

    src = src.transpose(1, 2).view(b, c, h, w)
    upscaled_embedding = self.output_upscaling(src)
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = upscaled_embedding.shape
    masks = (hyper_in @ upscaled_embedding.view(b, c, h * w)).view(b, -1, h, w)
    iou_pred = self.iou_prediction_head(iou_token_out)
    return masks, iou_pred


_PATCHED: dict[type, type] = {}


def patch_batched_decoder(decoder: nn.Module) -> nn.Module:
    """Give ``decoder`` the batched ``predict_masks`` (idempotent); returns the same object."""
    cls = type(decoder)
    if getattr(cls, "_medsam_batched", False):
        return decoder
    if cls not in _PATCHED:
        _PATCHED[cls] = type(f"Batched{cls.__name__}", (cls,),
                             {"predict_masks": _predict_masks, "_medsam_batched": True,
                              "__module__": __name__})
    decoder.__class__ = _PATCHED[cls]
    return decoder
