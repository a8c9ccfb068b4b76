"""Point prompts on top of a box (``BoxPredictor.predict(boxes, points, labels)``), LiteMedSAM on the CPU.

(a) box-only through the new arguments equals the old ``predict(boxes)`` exactly;
(b) the CPU fast path (``fast_decode``) with points equals the model's own prompt encoder + mask decoder;
(c) points move the mask in the expected direction on the synthetic chest X-ray (two lungs);
(d) bad points are refused with a MedSAMError naming the problem.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_lib.data.phantoms import CASES, make_case
from medsam_lib.fileio import MedSAMError
from medsam_lib.geometry import box_from_mask
from medsam_lib.models.predictor import BoxPredictor
from medsam_lib.prompts import deepest_point


@pytest.fixture(scope="module")
def xray(lite_model):
    case = next(c for c in CASES if c.case_id == "synthetic_xray_chest")
    image, labels = make_case(case)
    predictor = BoxPredictor(lite_model)
    predictor.set_image(image)
    return predictor, labels


def test_box_only_through_the_new_arguments_equals_predict(xray):
    predictor, labels = xray
    boxes = np.stack([box_from_mask(labels == 1), box_from_mask(labels == 2)])
    old = predictor.predict(boxes)
    for points, point_labels in ((None, None), (np.zeros((2, 0, 2)), np.zeros((2, 0)))):
        new = predictor.predict(boxes, points=points, labels=point_labels)
        assert np.array_equal(old.masks, new.masks)
        assert np.array_equal(old.scores, new.scores)
        assert torch.equal(old.low_res_logits, new.low_res_logits)


def test_fast_path_with_points_equals_the_model_forward(xray):
    predictor, labels = xray
    assert predictor._fast
    model = predictor.model
    boxes = np.stack([box_from_mask(labels > 0), box_from_mask(labels == 1)])
    points = np.array([[deepest_point(labels == 2), deepest_point(labels == 1)],
                       [deepest_point(labels == 1), [60.0, 30.0]]])
    point_labels = np.array([[0, 1], [1, 0]])
    got = predictor.predict(boxes, points=points, labels=point_labels)
    with torch.inference_mode():  # SAM's own path, written out here (LiteMedSAM: model input = 256 x 256 original)
        sparse, dense = model.prompt_encoder(
            points=(torch.as_tensor(points, dtype=torch.float32), torch.as_tensor(point_labels)),
            boxes=torch.as_tensor(boxes, dtype=torch.float32)[:, None, :], masks=None)
        assert sparse.shape[1] == 2 + 2  # two points, two box corners: no padding point with a box
        want, want_iou = model.mask_decoder(image_embeddings=predictor._embedding,
                                            image_pe=model.prompt_encoder.get_dense_pe(),
                                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                            multimask_output=False)
    span = float(want.abs().max())
    assert torch.allclose(got.low_res_logits, want, rtol=0, atol=1e-5 * span)
    assert np.allclose(got.scores, want_iou[:, 0].numpy(), atol=1e-5)
    # the points changed the answer (the same boxes alone give other logits)
    alone = predictor.predict(boxes)
    assert not torch.allclose(alone.low_res_logits, got.low_res_logits, atol=1e-2 * span)


def test_points_move_the_mask_in_the_expected_direction(xray):
    """One box around both lungs: a background click in the right lung removes most of it; adding a
    foreground click in the left lung brings more of the left lung back."""
    predictor, labels = xray
    left, right = labels == 1, labels == 2
    box = box_from_mask(labels > 0)
    centre_left, centre_right = deepest_point(left), deepest_point(right)
    box_only = predictor.predict([box]).masks[0]
    background = predictor.predict([box], points=[centre_right], labels=[0]).masks[0]
    assert (background & right).sum() < 0.5 * (box_only & right).sum()
    both = predictor.predict([box], points=[centre_right, centre_left], labels=[0, 1]).masks[0]
    assert (both & left).sum() > 1.1 * (background & left).sum()
    assert (both & right).sum() < 0.6 * (box_only & right).sum()  # the background click still holds


@pytest.mark.parametrize("points, labels, message", [
    ([[10, 10]], None, "go together"),
    ([[10, 10]], [2], "1 \\(foreground\\) or 0"),
    ([[10, 10], [20, 20]], [1], "one per point"),
    ([[300, 10]], [1], "outside the image"),
    ([[np.nan, 10]], [1], "non-finite"),
    ([10, 10, 3], [1], "\\(N, K, 2\\)"),
    ([["a", "b"]], [1], "points must be"),
])
def test_bad_points_are_refused(xray, points, labels, message):
    predictor, mask_labels = xray
    with pytest.raises(MedSAMError, match=message):
        predictor.predict([box_from_mask(mask_labels == 1)], points=points, labels=labels)


def test_points_for_several_boxes_need_a_leading_box_axis(xray):
    predictor, labels = xray
    boxes = np.stack([box_from_mask(labels == 1), box_from_mask(labels == 2)])
    with pytest.raises(MedSAMError, match="for N = 2 box"):
        predictor.predict(boxes, points=[[10, 10]], labels=[1])
