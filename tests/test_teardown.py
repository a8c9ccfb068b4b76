"""SAM taken apart: parameter and FLOP counts, segment-anything's predictor driving LiteMedSAM, the three modes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medsam_lib import cases, prompts, teardown
from medsam_lib.fileio import MedSAMError
from medsam_lib.evaluation import dice
from medsam_lib.models import zoo
from medsam_lib.models.predictor import BoxPredictor
from profile_helpers import profile_in


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return cases.load("ct_slice", profile_in(tmp_path_factory.mktemp("results")))[0]


@pytest.fixture(scope="module")
def lite_predictor(lite_model, ct):
    predictor = teardown.PromptPredictor(lite_model)
    predictor.set_image(ct.image, modality=ct.modality, source=ct.name)
    return predictor


@pytest.fixture(scope="module")
def modes(lite_predictor, ct):
    return teardown.three_modes(lite_predictor, ct, points_per_side=4, n_background=3)


def test_parameter_counts_add_up(lite_model):
    counts = teardown.parameter_counts(lite_model.model)
    assert set(counts) == {"image_encoder", "prompt_encoder", "mask_decoder", "total"}
    assert counts["total"] == sum(counts[c] for c in teardown.COMPONENTS)
    state = zoo.load_state_dict(lite_model.checkpoint)
    encoder_in_file = sum(v.numel() for k, v in state.items() if k.startswith("image_encoder.")
                          and "running_" not in k and "num_batches" not in k)
    assert counts["image_encoder"] == encoder_in_file
    with pytest.raises(MedSAMError, match="no image_encoder"):
        teardown.parameter_counts(nn.Linear(2, 2))


def test_flops_on_meta_equal_a_real_pass(lite_model):
    meta = teardown.count_flops(lite_model.model, lite_model.image_size)
    real = teardown.count_flops(lite_model.model, lite_model.image_size, on_meta=False)
    assert meta.encoder_per_image == real.encoder_per_image > 0
    assert meta.decoder_per_box == real.decoder_per_box > 0
    assert meta.embedding_shape == real.embedding_shape == (1, 256, 64, 64)
    assert meta.mask_logits_shape == (1, 3, 256, 256)  # three multimask candidates
    assert next(lite_model.model.parameters()).device.type == "cpu"  # the model itself stays put


def test_sam_vit_b_random_init_when_weights_absent(monkeypatch, tmp_path, lite_model):
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path))
    state = torch.random.get_rng_state()
    vit = teardown.sam_vit_b(seed=3, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    assert not vit.pretrained and vit.checkpoint is None and vit.sha256 is None
    monkeypatch.setattr(teardown.architecture, "sam_vit_b", lambda seed, device: vit)
    models, pretrained = teardown.load_models("litemedsam", seed=3, device="cpu")
    assert list(models) == ["LiteMedSAM", "SAM ViT-B (random init)"] and not pretrained
    assert teardown.weights_note(vit) == "random init (sam_vit_b weights not in the cache)"
    assert "checksum verified" in teardown.weights_note(models["LiteMedSAM"])
    counts = teardown.parameter_counts(vit.model)
    # SAM ViT-B: ~89.7 M encoder parameters (Kirillov et al. 2023); decoder and prompt encoder as LiteMedSAM's
    assert 85e6 < counts["image_encoder"] < 95e6
    lite_counts = teardown.parameter_counts(lite_model.model)
    assert counts["mask_decoder"] == lite_counts["mask_decoder"]
    assert counts["prompt_encoder"] == lite_counts["prompt_encoder"]
    flops = teardown.count_flops(vit.model, vit.image_size)
    lite_flops = teardown.count_flops(lite_model.model, lite_model.image_size)
    assert flops.embedding_shape == (1, 256, 64, 64)
    assert flops.encoder_per_image > 10 * lite_flops.encoder_per_image
    table = teardown.architecture_table({"lite": lite_model, "vit": vit}, {"lite": lite_flops, "vit": flops})
    assert list(table["model"]) == ["lite", "vit"]
    assert table["encoder GFLOPs / image"][1] == round(flops.encoder_per_image / 1e9, 2)


def test_prompt_predictor_box_matches_box_predictor(lite_model, lite_predictor, ct):
    reference = BoxPredictor(lite_model)
    reference.set_image(ct.image, modality=ct.modality)
    expected = reference.predict([ct.box])
    result = teardown.box_mode(lite_predictor, ct.box, ct.truth)
    assert dice(result.mask, expected.masks[0]) == 1.0
    assert result.score == pytest.approx(float(expected.scores[0]), abs=1e-5)
    assert result.dice >= 0.9


def test_fig2_model_choice(lite_predictor, ct):
    from types import SimpleNamespace

    random_vit = SimpleNamespace(loaded=SimpleNamespace(name="sam_vit_b", pretrained=False))
    predictors = {"LiteMedSAM": lite_predictor, "SAM ViT-B (random init)": random_vit}
    assert teardown.fig2_predictor("auto", predictors, ct) == ("LiteMedSAM", lite_predictor)
    assert teardown.fig2_predictor("litemedsam", predictors, ct)[1] is lite_predictor
    real_vit = SimpleNamespace(loaded=SimpleNamespace(name="sam_vit_b", pretrained=True))
    with_weights = {"LiteMedSAM": lite_predictor, "SAM ViT-B": real_vit}
    assert teardown.fig2_predictor("auto", with_weights, ct) == ("SAM ViT-B", real_vit)
    with pytest.raises(MedSAMError, match="unknown model"):
        teardown.fig2_predictor("sam_vit_h", predictors, ct)


def test_multimask_and_point_mode(lite_predictor, ct):
    click = teardown.deepest_point(ct.truth)
    assert ct.truth[int(click[1]), int(click[0])]
    masks, scores = teardown.multimask_outputs(lite_predictor, click)
    assert masks.shape == (3, *ct.image.shape) and masks.dtype == bool and scores.shape == (3,)
    steps = teardown.point_mode(lite_predictor, ct.truth, n_background=2)
    assert len(steps) == 3
    assert steps[0].score == pytest.approx(float(scores.max()), abs=1e-6)  # SAM's pick of the three
    for n, step in enumerate(steps):
        assert list(step.point_labels) == [1] + [0] * n
        for (x, y), label in zip(step.points[1:], step.point_labels[1:]):
            assert not ct.truth[int(y), int(x)]  # background clicks land off the target
        assert step.dice == pytest.approx(dice(step.mask, ct.truth))
    with pytest.raises(MedSAMError, match="empty region"):
        teardown.deepest_point(np.zeros((4, 4), bool))


def test_segment_everything_keeps_the_embedding(lite_predictor, ct, modes):
    features = lite_predictor.features
    records = teardown.segment_everything(lite_predictor, ct.image, ct.modality, points_per_side=4,
                                          pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert records and all(r["segmentation"].shape == ct.image.shape for r in records)
    assert [r["area"] for r in records] == sorted((r["area"] for r in records), reverse=True)
    assert lite_predictor.is_image_set and lite_predictor.features is features  # no second encoder pass
    table = teardown.modes_table(modes, "synthetic", ct.target)
    assert list(table["panel"])[:2] == ["segment everything", "box"]
    assert table["masks"][0] == len(modes.everything)
    assert table["Dice vs liver"][1] == round(modes.box.dice, 3)
    assert (table["data"] == "synthetic").all()


def test_reference_slice_bad_source():
    with pytest.raises(MedSAMError, match="data_source"):
        cases.load("ct_slice", profile_in("unused", data_source="cloud"))
    with pytest.raises(MedSAMError, match="no case set"):
        cases.load("nowhere", profile_in("unused"))


def test_vit_b_prompt_predictor_matches_box_predictor(ct):
    """Both families go through models/transforms.py: the adapter's box mask is the BoxPredictor's."""
    torch.manual_seed(0)
    model = zoo.build_model("vit_b").eval()

    class CheapEncoder(nn.Module):  # a 1024 -> 64 x 64 x 256 stand-in: the ViT-B's pass takes a minute here
        img_size = 1024

        def __init__(self):
            super().__init__()
            self.pool, self.mix = nn.AvgPool2d(16), nn.Conv2d(3, 256, 1)

        def forward(self, x):
            return self.mix(self.pool(x))

    model.image_encoder = CheapEncoder().eval()
    vit = zoo.LoadedModel(model=model, name="sam_vit_b", arch="vit_b", checkpoint=None)
    image = ct.image[::2, :]  # non-square (64 x 128): exercises the padding and the crop
    box = np.array([10.0, 5.0, 90.0, 50.0])
    adapter = teardown.PromptPredictor(vit)
    adapter.set_image(image, modality="CT")
    assert adapter.input_size == (512, 1024) and adapter.original_size == image.shape
    masks, scores, _ = adapter.predict(box=box, multimask_output=False)
    reference = BoxPredictor(vit)
    reference.set_image(image, modality="CT")
    expected = reference.predict([box])
    assert masks.shape == (1, *image.shape)
    assert (masks[0] == expected.masks[0]).mean() >= 0.999
    assert float(scores[0]) == pytest.approx(float(expected.scores[0]), abs=1e-4)


def test_simulated_clicks_are_pure_and_reusable(ct):
    truth = ct.truth
    first = prompts.deepest_point(truth)
    grown = np.zeros_like(truth)
    x0, y0, x1, y1 = (int(v) for v in ct.box)
    grown[max(0, y0 - 15):y1 + 16, max(0, x0 - 15):x1 + 16] = True  # a mask spilling over the target
    click = prompts.next_background_click(grown, truth, first[None], ct.box)
    assert grown[int(click[1]), int(click[0])] and not truth[int(click[1]), int(click[0])]
    exact = prompts.next_background_click(truth, truth, first[None], ct.box)  # no false positive
    assert exact is None or (not truth[int(exact[1]), int(exact[0])]
                             and x0 <= exact[0] <= x1 and y0 <= exact[1] <= y1)
    with pytest.raises(MedSAMError, match="differ in shape"):
        prompts.next_background_click(truth[:5], truth, first[None], ct.box)


def test_figures_have_titles_legends_and_units(lite_predictor, ct, lite_model, modes):
    import matplotlib

    matplotlib.use("Agg")  # the test's choice; library code never switches the backend
    import matplotlib.pyplot as plt

    fig = teardown.plot_three_modes(ct, modes, "LiteMedSAM")
    assert len([ax for ax in fig.axes if ax.images]) == 6 and fig.axes[0].get_gridspec().ncols == 3
    assert fig._suptitle.get_text().startswith("Fig. 2") and fig.legends
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "reference liver" in texts and "background click" in texts
    assert all("IoU score" not in ax.get_title() for ax in fig.axes)
    assert "predicted IoU" in fig.axes[1].get_title()
    plt.close(fig)
    click = prompts.deepest_point(ct.truth)
    fig = teardown.plot_multimask(ct, click, {"LiteMedSAM": teardown.multimask_outputs(lite_predictor, click)})
    image_ax, bars = fig.axes[:2]
    assert image_ax.get_xlabel() == "x (pixels)" and "candidate 1" in image_ax.get_legend().get_texts()[1].get_text()
    assert [t.get_text() for t in bars.get_legend().get_texts()][0].startswith("predicted IoU (the model's estimate)")
    plt.close(fig)
    table = teardown.architecture_table({"LiteMedSAM": lite_model})
    fig = teardown.plot_architecture(table)
    assert all(ax.get_title() and ax.get_ylabel() for ax in fig.axes)
    plt.close(fig)


@pytest.mark.shared
def test_real_ct_slice(shared_data, lite_model):
    ct = cases.load("ct_slice", profile_in("unused", data_source="shared"))[0]
    assert not ct.synthetic and ct.image.shape == (512, 512) and ct.truth.sum() > 10_000
    predictor = teardown.PromptPredictor(lite_model)
    predictor.set_image(ct.image, modality=ct.modality)
    assert teardown.box_mode(predictor, ct.box, ct.truth).dice >= 0.9
