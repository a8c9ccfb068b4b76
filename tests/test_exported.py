"""The exported LiteMedSAM (issue 18): ONNX files run by OpenVINO / ONNX Runtime, against torch.

- Real cases, one by one (../shared/data: three images of every 2D folder and the slice of largest
  ground truth of every 3D case; ../shared/cohorts: the two cases per folder that test_cohorts reads):
  the embedding of the runtime ``BoxPredictor`` picks (``auto``) has a cosine >= 0.999 to the plain
  torch encoder's (the module's own forward, float32), and the mask of the case's ground-truth box
  from each embedding agree (Dice >= 0.99). ONNX Runtime on a few of them.
- The exported decoder equals the torch prompt encoder + mask decoder for boxes and box + points.
- The cache: one export per weights (a second predictor reads the file), a corrupted file is exported
  again, other weights get another file; the runtime choice, its refusals, and the fallback to torch.
- ``python -m medsam_lib export`` writes the two files and their record.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medsam_lib.evaluation import dice
from medsam_lib.fileio import MedSAMError
from medsam_lib.geometry import box_from_mask
from medsam_lib.models import exported
from medsam_lib.models.predictor import BoxPredictor

from real_cases import cases_2d, cases_3d, cases_cohorts

REPO = Path(__file__).resolve().parent.parent
COSINE, DICE = 0.999, 0.99

@pytest.fixture(scope="module")
def predictors(lite_model):
    """(ours: the runtime ``auto`` picks, the torch reference: the encoder module's own forward)."""
    ours = BoxPredictor(lite_model, cache_size=0)
    reference = BoxPredictor(lite_model, runtime="torch", cache_size=0)
    reference._encode = torch.inference_mode()(lambda batch: lite_model.model.image_encoder(batch))
    return ours, reference


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().ravel(), b.double().ravel()
    return float(a @ b / (a.norm() * b.norm()))


def _check_cases(cases, ours: BoxPredictor, reference: BoxPredictor) -> int:
    failures, n = [], 0
    for name, image, truth in cases:
        if not truth.any():
            continue
        box = box_from_mask(truth)
        ours.set_image(image, source=name)
        reference.set_image(image, source=name)
        cosine = _cosine(ours._embedding, reference._embedding)
        agreement = dice(ours.predict([box]).masks[0], reference.predict([box]).masks[0])
        if cosine < COSINE or agreement < DICE:
            failures.append(f"{name}: cosine {cosine:.6f}, mask Dice {agreement:.4f}")
        n += 1
    assert not failures, "\n".join(failures)
    return n


@pytest.mark.shared
def test_auto_runtime_is_exported_float32(predictors):
    ours, _ = predictors
    assert ours.runtime == ("openvino" if exported.installed("openvino") else "onnxruntime")
    assert ours._exported.session.precision == "float32"  # bfloat16 fails the cosine bar: never chosen


@pytest.mark.shared
@pytest.mark.slow
def test_each_real_2d_and_3d_case_of_shared_data(shared_data, predictors):
    n = _check_cases(list(cases_2d(shared_data, 3)) + list(cases_3d(shared_data)), *predictors)
    assert n >= 30


@pytest.mark.shared
@pytest.mark.slow
def test_each_cohort_case(shared_cohorts, predictors):
    assert _check_cases(cases_cohorts(shared_cohorts, 2), *predictors) == 18


@pytest.mark.shared
def test_onnxruntime_too(shared_data, lite_model, predictors):
    ort = BoxPredictor(lite_model, runtime="onnxruntime", cache_size=0)
    cases = [c for i, c in enumerate(cases_2d(shared_data, 3)) if i % 8 == 0]
    assert _check_cases(cases, ort, predictors[1]) == 3


# --- the decoder ------------------------------------------------------------------------------------

@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_exported_decoder_equals_torch(lite_model, runtime):
    model = lite_model.model
    decoder = exported.ExportedDecoder(model, runtime)
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    boxes = np.array([[30, 40, 120, 150], [100, 20, 200, 90]], np.float32)
    points, point_labels = np.array([[[70, 80]], [[150, 60]]], np.float32), np.array([[1], [0]])
    coords, labels = exported.box_prompts(boxes)
    for with_points in (False, True):
        c, lab = coords, labels
        if with_points:
            c, lab = np.concatenate([points, coords], 1), np.concatenate([point_labels, labels], 1)
        got_logits, got_iou = decoder(embedding, c, lab)
        with torch.inference_mode():
            sparse, dense = model.prompt_encoder(
                points=(torch.from_numpy(points), torch.from_numpy(point_labels)) if with_points else None,
                boxes=torch.from_numpy(boxes), masks=None)
            want_logits, want_iou = model.mask_decoder(
                image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        assert got_logits.shape == want_logits.shape == (2, 1, 256, 256)
        assert torch.allclose(got_logits, want_logits, atol=2e-4), float((got_logits - want_logits).abs().max())
        assert torch.allclose(got_iou, want_iou[:, 0], atol=1e-4)
        for i in range(2):
            assert dice(got_logits[i, 0].numpy() > 0, want_logits[i, 0].numpy() > 0) >= DICE


def test_prompt_decoder_pads_like_sams_prompt_encoder(lite_model):
    """Points without a box: SAM pads one point labelled -1; the convention's -1 row does the same."""
    model = lite_model.model
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(1))
    pts, lab = torch.tensor([[[60.0, 70.0], [90.0, 40.0]]]), torch.tensor([[1, 0]])
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=(pts, lab), boxes=None, masks=None)
        want, _ = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                     multimask_output=False)
        got, _ = exported.PromptDecoder(model)(embedding, torch.cat([pts, torch.zeros(1, 1, 2)], 1),
                                               torch.cat([lab, torch.tensor([[-1]])], 1))
    assert torch.allclose(got, want, atol=1e-5)


# --- the cache and the runtime choice ------------------------------------------------------------------

class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, image):
        return self.conv(image).relu()


def test_export_once_per_weights_and_again_when_corrupted(tmp_path, monkeypatch):
    monkeypatch.setitem(exported.NAMES, "tiny", (["image"], ["out"]))
    module, example = _Tiny().eval(), (torch.randn(1, 3, 8, 8),)
    first = exported.export_onnx("tiny", module, example, folder=tmp_path)
    record = json.loads(first.with_suffix(".json").read_text(encoding="utf-8"))
    assert record["weights_sha256"] == exported.weights_sha256(module)
    assert first.name.startswith(f"tiny-{record['weights_sha256'][:16]}")
    stamp = first.stat().st_mtime_ns
    assert exported.export_onnx("tiny", module, example, folder=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp  # read from the cache, not exported again
    first.write_bytes(first.read_bytes()[:100])  # a truncated file
    again = exported.export_onnx("tiny", module, example, folder=tmp_path)
    assert again == first and json.loads(again.with_suffix(".json").read_text(encoding="utf-8"))[
        "onnx_sha256"] != "" and exported._record_ok(again, again.with_suffix(".json"), record["weights_sha256"])
    other = _Tiny().eval()
    assert exported.export_onnx("tiny", other, example, folder=tmp_path) != first  # other weights, other file
    assert not list(tmp_path.glob(".*part*"))  # no temporary file left behind
    session = exported.Session(first, "onnxruntime", 1)
    with torch.inference_mode():
        want = module(example[0]).numpy()
    assert np.allclose(session(example[0].numpy())[0], want, atol=1e-5)


def test_runtime_choice_and_refusals(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(exported.RUNTIME_ENV, raising=False)
    assert exported.resolve_runtime("auto", "lite", cpu) == "openvino"
    assert exported.resolve_runtime("auto", "vit_b", cpu) == "torch"
    assert exported.resolve_runtime("torch", "lite", cpu) == "torch"
    monkeypatch.setenv(exported.RUNTIME_ENV, "torch")
    assert exported.resolve_runtime("auto", "lite", cpu) == "torch"
    assert exported.resolve_runtime("onnxruntime", "lite", cpu) == "onnxruntime"  # a named runtime wins
    monkeypatch.setenv(exported.RUNTIME_ENV, "tensorrt")
    with pytest.raises(MedSAMError, match=r"\$MEDSAM_RUNTIME must be one of"):
        exported.resolve_runtime("auto", "lite", cpu)
    with pytest.raises(MedSAMError, match="runtime must be one of"):
        exported.resolve_runtime("onnx", "lite", cpu)
    with pytest.raises(MedSAMError, match="'vit_b' on cpu: use runtime 'torch'"):
        exported.resolve_runtime("openvino", "vit_b", cpu)
    with pytest.raises(MedSAMError, match="OpenVINO option"):
        exported.Session(Path("unused.onnx"), "onnxruntime", 1, precision="bfloat16")


def test_unwritable_cache_falls_back_to_torch_when_automatic(tmp_path, monkeypatch, lite_model):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(blocker))
    monkeypatch.delenv(exported.RUNTIME_ENV, raising=False)
    with pytest.warns(RuntimeWarning, match="cannot create the export cache .*encoding with torch instead"):
        predictor = BoxPredictor(lite_model)
    assert predictor.runtime == "torch" and predictor._exported is None
    with pytest.raises(MedSAMError, match="cannot create the export cache"):
        BoxPredictor(lite_model, runtime="openvino")


def test_export_command(tmp_path):
    out = tmp_path / "onnx"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "medsam_lib", "export", "--out", str(out)], capture_output=True,
                         text=True, encoding="utf-8", env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    record = json.loads((out / "export.json").read_text(encoding="utf-8"))
    for name in ("encoder.onnx", "decoder.onnx"):
        from medsam_lib.fileio import sha256_file

        assert record["files"][name]["sha256"] == sha256_file(out / name)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["embedding", "coords", "labels"]
    bad = subprocess.run([sys.executable, "-m", "medsam_lib", "export", "--out", str(tmp_path / "no" / "such")],
                         capture_output=True, text=True, encoding="utf-8", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "parent folder" in bad.stderr and "no" in bad.stderr
