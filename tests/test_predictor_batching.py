"""Batching and the CPU fast path of the BoxPredictor.

(a) many boxes on one image in one call = one box at a time;
(b) a batch of images with one box each = one image at a time, for LiteMedSAM and a randomly
    initialised SAM ViT-B;
(c) stock segment-anything 1.0 ``MaskDecoder`` cannot decode that batch, the patched one can;
(d) the CT demo box gives the mask of the reference pipeline (tests/reference_pipeline.py);
plus the CPU fast paths (``fast_decode``, ``fast_encode``) against the model's own modules.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medsam_lib.data.phantoms import CASES, make_case
from medsam_lib.data.readers import read_image
from medsam_lib.geometry import box_from_mask
from medsam_lib.evaluation import dice
from medsam_lib.models import fast_decode, fast_encode
from medsam_lib.models.decoder import patch_batched_decoder
from medsam_lib.models.predictor import DECODE_CHUNK, BoxPredictor
from medsam_lib.models.zoo import LoadedModel, build_model

from reference_pipeline import reference_mask

DEMO_BOX = (95.0, 255.0, 190.0, 350.0)  # MedSAM_Inference.py's --box for img_demo.png


def _xray_phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic chest X-ray (uint16, 256 x 256), its label map, and boxes around its two lungs."""
    case = next(c for c in CASES if c.case_id == "synthetic_xray_chest")
    image, labels = make_case(case)
    return image, labels, np.stack([box_from_mask(labels == 1), box_from_mask(labels == 2)])


def _boxes(first: np.ndarray, n: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = shape
    out = list(first)
    while len(out) < n:
        x0, y0 = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
        out.append([x0, y0, x0 + rng.uniform(8, w * 0.4), y0 + rng.uniform(8, h * 0.4)])
    return np.array(out)


def _reference_decode(model: torch.nn.Module, embeddings: torch.Tensor, boxes: torch.Tensor):
    """The model's own prompt encoder + mask decoder (the path CUDA takes)."""
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        return model.mask_decoder(image_embeddings=embeddings, image_pe=model.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                  multimask_output=False)


@pytest.fixture(scope="module")
def predictor(lite_model):
    return BoxPredictor(lite_model)


@pytest.fixture(scope="module")
def random_vit_b() -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(model=build_model("vit_b").eval(), name="random vit_b", arch="vit_b", checkpoint=None)


def test_cpu_uses_the_fast_paths(predictor, random_vit_b):
    assert predictor._fast  # both architectures have SAM's decoder unmodified
    assert fast_decode.supports(random_vit_b.model)
    assert fast_encode.supports(predictor.model.image_encoder)


# --- (a) many boxes on one image ------------------------------------------------------------------

def test_many_boxes_in_one_call_equal_one_at_a_time(predictor):
    image, _, lungs = _xray_phantom()
    boxes = _boxes(lungs, DECODE_CHUNK + 2, image.shape)  # more than one decode chunk
    predictor.set_image(image, modality="X-Ray")
    together = predictor.predict(boxes)
    assert together.masks.shape == (len(boxes), *image.shape) and together.masks.dtype == bool
    assert together.low_res_logits.shape == (len(boxes), 1, 256, 256)
    for i, box in enumerate(boxes):
        alone = predictor.predict([box])
        assert np.array_equal(alone.masks[0], together.masks[i]), f"box {i}"
        assert alone.scores[0] == pytest.approx(together.scores[i], abs=1e-5)
    for i in range(2):  # the lungs are found
        x0, y0, x1, y1 = boxes[i].astype(int)
        assert together.masks[i].sum() > 0.3 * (x1 - x0) * (y1 - y0)


def test_fast_decoder_matches_the_model_decoder(lite_model, random_vit_b):
    """The rewritten decoder against the model's own, on LiteMedSAM and on random ViT-B weights."""
    torch.manual_seed(1)
    boxes = torch.tensor([[20.0, 30.0, 120.0, 200.0], [0.0, 0.0, 255.0, 255.0], [100.0, 90.0, 110.0, 99.0]])
    for loaded, scale in ((lite_model, 1.0), (random_vit_b, 4.0)):
        model = loaded.model
        embeddings = torch.randn(1, 256, 64, 64)
        want, want_iou = _reference_decode(model, embeddings, boxes * scale)
        with torch.inference_mode():
            terms = fast_decode.precompute(model, embeddings)
            sparse, dense = model.prompt_encoder(points=None, boxes=boxes[:, None, :] * scale, masks=None)
            got, got_iou = fast_decode.decode(model, terms, sparse, multimask_output=False)
            got3, iou3 = fast_decode.decode(model, terms, sparse, multimask_output=True)
            want3, want_iou3 = model.mask_decoder(
                image_embeddings=embeddings, image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)
        span = float(want.abs().max())
        assert got.shape == want.shape and got3.shape == want3.shape == (3, 3, 256, 256)
        assert torch.allclose(got, want, rtol=0, atol=1e-5 * span), loaded.name
        assert torch.allclose(got3, want3, rtol=0, atol=1e-5 * span), loaded.name
        assert torch.allclose(got_iou, want_iou, atol=1e-5) and torch.allclose(iou3, want_iou3, atol=1e-5)


def test_a_modified_decoder_is_not_rewritten(lite_model):
    """A decoder whose transformer is overridden runs through its own forward."""
    model = copy.deepcopy(lite_model.model)
    base = type(model.mask_decoder.transformer)

    class Custom(base):
        def forward(self, *args):
            return base.forward(self, *args)

    model.mask_decoder.transformer.__class__ = Custom
    assert fast_decode.supports(lite_model.model)
    assert not fast_decode.supports(model)
    assert not BoxPredictor(LoadedModel(model, "custom", "lite", None))._fast


def test_fast_encoder_matches_the_module(lite_model):
    encoder = lite_model.model.image_encoder
    assert fast_encode.supports(encoder)
    torch.manual_seed(3)
    x = torch.rand(2, 3, 256, 256)
    with torch.inference_mode():
        want = encoder(x)
        got = fast_encode.encode(encoder, x.contiguous(memory_format=torch.channels_last))
        got_nchw = fast_encode.encode(encoder, x)
    span = float(want.abs().max())
    assert got.shape == want.shape == (2, 256, 64, 64)
    assert torch.allclose(got, want, rtol=0, atol=1e-4 * span)
    assert torch.allclose(got_nchw, want, rtol=0, atol=1e-4 * span)


def test_fast_encoder_only_for_the_stock_encoder_in_eval_mode(lite_model, random_vit_b):
    model = copy.deepcopy(lite_model.model)
    model.image_encoder.train()
    assert not fast_encode.supports(model.image_encoder)  # BatchNorm would use batch statistics
    model.image_encoder.eval()
    assert fast_encode.supports(model.image_encoder)
    block = model.image_encoder.layers[1].blocks[0]
    base = type(block)

    class Custom(base):
        def forward(self, x):
            return base.forward(self, x)

    block.__class__ = Custom
    assert not fast_encode.supports(model.image_encoder)
    assert not fast_encode.supports(random_vit_b.model.image_encoder)


def test_cache_off_still_predicts(lite_model):
    image, _, lungs = _xray_phantom()
    predictor = BoxPredictor(lite_model, cache_size=0)
    predictor.set_image(image, modality="X-Ray")
    assert predictor.predict(lungs).masks.shape == (2, *image.shape)


# --- (b) a batch of images, one box each ----------------------------------------------------------

def _small_images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two crops of different sizes (one flipped) of the X-ray phantom, with a box around a lung."""
    image, labels, _ = _xray_phantom()
    crops = [(slice(40, 200), slice(20, 236), 1), (slice(30, 230), slice(50, 210), 2)]
    images, boxes = [], []
    for i, (rows, cols, lung) in enumerate(crops):
        img, lab = (image, labels) if i == 0 else (image[::-1, ::-1], labels[::-1, ::-1])
        images.append(np.ascontiguousarray(img[rows, cols]))
        boxes.append(box_from_mask(lab[rows, cols] == lung))
    return images, boxes


def test_lite_batch_of_images_equals_one_at_a_time(predictor):
    images, boxes = _small_images()
    batch = predictor.predict_batch(images, boxes, modality="X-Ray")
    assert len(batch.masks) == 2 and batch.scores.shape == (2,)
    for i, (image, box) in enumerate(zip(images, boxes)):
        predictor.set_image(image, modality="X-Ray")
        alone = predictor.predict([box])
        assert batch.masks[i].shape == image.shape
        assert dice(batch.masks[i], alone.masks[0]) >= 0.999, f"image {i}"
        assert alone.masks[0].sum() > 100
        assert batch.scores[i] == pytest.approx(alone.scores[0], abs=1e-4)


@pytest.mark.slow
def test_vit_b_batch_of_images_equals_one_at_a_time():
    """Random weights: logits are compared (masks of an untrained model sit near the threshold).
    Batching is about the 1024 px transform, padding and the decoder, not the encoder's depth: the
    encoder keeps 2 of its 12 blocks (one windowed, one global attention), a sixth of the CPU time."""
    torch.manual_seed(0)
    model = build_model("vit_b").eval()
    model.image_encoder.blocks = model.image_encoder.blocks[1:3]
    assert model.image_encoder.blocks[0].window_size > 0 and model.image_encoder.blocks[1].window_size == 0
    images, boxes = _small_images()
    predictor = BoxPredictor(LoadedModel(model=model, name="random vit_b (2 blocks)", arch="vit_b", checkpoint=None))
    batch = predictor.predict_batch(images, boxes, modality="X-Ray")
    assert batch.low_res_logits.shape == (2, 1, 256, 256)
    for i, (image, box) in enumerate(zip(images, boxes)):
        predictor.set_image(image, modality="X-Ray")
        alone = predictor.predict([box])
        assert batch.masks[i].shape == image.shape
        want = alone.low_res_logits[0]
        assert torch.allclose(batch.low_res_logits[i], want, rtol=0, atol=1e-4 * float(want.abs().max()))
        assert np.mean(batch.masks[i] != alone.masks[0]) < 1e-3
        assert batch.scores[i] == pytest.approx(alone.scores[0], abs=1e-4)


# --- (c) the decoder patch is needed --------------------------------------------------------------

def test_stock_decoder_fails_on_a_batch_of_images_and_the_patched_one_does_not():
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    torch.manual_seed(2)
    stock = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256,
                        mlp_dim=2048, num_heads=8), transformer_dim=256).eval()
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                           mask_in_chans=16).eval()
    patched = patch_batched_decoder(copy.deepcopy(stock))
    b = 3
    embeddings = torch.randn(b, 256, 64, 64)
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0], [500.0, 500.0, 900.0, 800.0], [0.0, 0.0, 1023.0, 1023.0]])
    with torch.inference_mode():
        sparse, dense = prompt(points=None, boxes=boxes[:, None, :], masks=None)
        kwargs = dict(image_embeddings=embeddings, image_pe=prompt.get_dense_pe(), sparse_prompt_embeddings=sparse,
                      dense_prompt_embeddings=dense, multimask_output=False)
        try:
            stock_masks, _ = stock(**kwargs)
        except RuntimeError:
            stock_masks = None
        assert stock_masks is None or stock_masks.shape[0] == b * b
        masks, iou = patched(**kwargs)
        assert masks.shape == (b, 1, 256, 256) and iou.shape == (b, 1)
        for i in range(b):  # each image with its own box, decoded alone by the stock decoder
            alone, _ = stock(**{**kwargs, "image_embeddings": embeddings[i:i + 1],
                                "sparse_prompt_embeddings": sparse[i:i + 1], "dense_prompt_embeddings": dense[i:i + 1]})
            assert torch.allclose(masks[i], alone[0], atol=1e-4)


# --- (d) the CT demo box, against an independent computation -------------------------------------

@pytest.mark.shared
def test_ct_demo_box_matches_a_plain_computation(shared_data, predictor, lite_model):
    image = read_image(shared_data / "ct_medsam_demo" / "img_demo.png").array
    want = reference_mask(image, DEMO_BOX)
    predictor.set_image(image)
    got = predictor.predict([DEMO_BOX]).masks[0]
    assert dice(got, want) >= 0.999
    assert abs(int(got.sum()) - int(want.sum())) <= 5
    assert 4900 <= got.sum() <= 5050  # 4972 pixels when this was written (SOURCE.md: about 4,970)
