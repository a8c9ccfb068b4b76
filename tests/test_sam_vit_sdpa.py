"""SDPA attention with SAM's decomposed relative-position bias equals segment_anything's Attention."""
from __future__ import annotations

import pytest
import torch

from medsam_lib.models import sam_vit_sdpa


@pytest.fixture(scope="module")
def small_vit():
    """A small ViT of SAM's design: 8 x 8 tokens, windows of 3 (padded to 9 x 9) and global blocks,
    with non-zero relative-position tables (SAM initialises them at zero, which would hide a bug)."""
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=64, patch_size=8, embed_dim=48, depth=4, num_heads=3, mlp_ratio=2.0,
                              out_chans=16, qkv_bias=True, use_rel_pos=True, window_size=3,
                              global_attn_indexes=(1, 3)).eval()
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if "rel_pos" in name:
                param.normal_(0, 0.5)
    return encoder


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("block_index", [0, 1], ids=["windowed", "global"])
def test_sdpa_attention_equals_sam_attention(small_vit, batch, block_index):
    from segment_anything.modeling.image_encoder import window_partition

    block = small_vit.blocks[block_index]
    assert (block.window_size > 0) == (block_index == 0)
    x = torch.randn(batch, 8, 8, 48)
    if block.window_size:
        x, _ = window_partition(x, block.window_size)  # (batch * 9, 3, 3, C)
    with torch.no_grad():
        expected = block.attn(x)
        got = sam_vit_sdpa.attention(block.attn, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the bias matters: without it the result is far off
        plain = torch.nn.functional.scaled_dot_product_attention(
            *block.attn.qkv(x).reshape(len(x), -1, 3, 3, 16).permute(2, 0, 3, 1, 4).unbind(0))
    assert not torch.allclose(block.attn.proj(plain.transpose(1, 2).reshape(x.shape)), expected, atol=1e-3)


@pytest.mark.parametrize("batch", [1, 2])
def test_fast_encoder_equals_the_stock_forward(small_vit, batch):
    x = torch.randn(batch, 3, 64, 64)
    with torch.no_grad():
        expected = small_vit(x)
    got = sam_vit_sdpa.SdpaViTEncoder(small_vit, dtype=torch.float32)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    cast = sam_vit_sdpa.SdpaViTEncoder(small_vit, dtype=torch.bfloat16)(x).float()  # a cast copy; model unchanged
    assert next(small_vit.parameters()).dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(cast.flatten(), expected.flatten(), dim=0)
    assert cos > 0.99


def test_supports_only_the_stock_modules(small_vit):
    assert sam_vit_sdpa.supports(small_vit)
    import copy

    changed = copy.deepcopy(small_vit)
    changed.blocks[0].attn = torch.nn.Identity()
    assert not sam_vit_sdpa.supports(changed)
    assert not sam_vit_sdpa.supports(copy.deepcopy(small_vit).train())


def test_encoder_path_is_chosen_at_run_time():
    from medsam_lib.embeddings.encoder import BatchEncoder
    from medsam_lib.models.zoo import LoadedModel, build_model

    vit = LoadedModel(build_model("vit_b").eval(), "random_vit_b", "vit_b", None)
    assert BatchEncoder(vit, torch.device("cpu")).path == "module-cpu-float32"  # CI: no GPU, stock forward
    assert sam_vit_sdpa.supports(vit.model.image_encoder)  # on CUDA this one takes the SDPA bfloat16 path
