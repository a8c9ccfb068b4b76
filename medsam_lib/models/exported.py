"""LiteMedSAM exported to ONNX and run by OpenVINO or ONNX Runtime on the CPU; torch stays the reference.

    encoder = exported_encoder(loaded, "openvino")      # exports once per weights, then reads the cache
    embeddings = encoder(batch)                         # (B, 3, 256, 256) -> (B, 256, 64, 64), float32
    decoder = exported_decoder(loaded, "onnxruntime")
    logits, iou = decoder(embedding, coords, labels)    # SAM's ONNX prompt convention (below)

Runtimes (``RUNTIMES``; ``resolve_runtime`` picks one at run time):
- ``openvino``: the fastest encoder measured here (``benchmarks/predictor.py``); the default for
  LiteMedSAM on the CPU when the package imports.
- ``onnxruntime``: the same ONNX file on ONNX Runtime (next, when OpenVINO does not import).
- ``torch``: the model's modules (with ``fast_encode``): the reference, and the only runtime on
  CUDA and for the ViT-B models. ``MEDSAM_RUNTIME=torch`` (or ``runtime="torch"``) forces it.

Export: ``torch.onnx.export`` (the dynamo exporter, opset 18) of the encoder module as it is, batch
1; of the decoder as ``PromptDecoder``, with any number of prompts N and points P. Files live in
``cache_dir()/exported/`` (``$MEDSAM_CACHE_DIR``, else ``~/.cache/medsam_lib``), named by the
SHA-256 of the component's own weights (so a fine-tuned decoder gets its own file and shares the
base encoder's), written atomically beside a record holding the weights' and the file's SHA-256.
A file whose SHA-256 differs from its record (a truncated or edited cache) is exported again.

Precision: float32 everywhere by default. ``precision="bfloat16"`` (OpenVINO only, CPUs with native
bf16) encodes in about 0.6x the time, but its embeddings reach a cosine of only 0.998-0.9995 to the
float32 ones on real images (``tests/test_exported.py`` holds float32 to >= 0.999 case by case;
``benchmarks/exported_accuracy.py`` measures both), so nothing selects it by default.

The exported decoder takes SAM's ONNX prompt convention: ``coords`` (N, P, 2) model-input pixels,
``labels`` (N, P): 1 foreground point, 0 background point, 2 / 3 a box's top-left / bottom-right
corner, -1 padding (a prompt of points without a box ends with one padding point, as SAM's prompt
encoder pads). One mask per prompt (the paper's single-mask output): logits (N, 1, 256, 256), IoU
(N,). On the CPU the predictor decodes with ``fast_decode`` instead: it measured about twice as fast
as both exported decoders (the rewrite computes the box-independent half once per image).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .. import paper
from ..fileio import MedSAMError, atomic_path, atomic_write_text, sha256_file
from .checkpoint_hash import cache_dir

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
EXPORTED = ("openvino", "onnxruntime")  # runtimes that run the exported files, in order of preference
PRECISIONS = ("float32", "bfloat16")
RUNTIME_ENV = "MEDSAM_RUNTIME"
EXPORT_VERSION = 1  # part of every file name: bump when the exported graphs change
OPSET = 18
_PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
log = logging.getLogger(__name__)


def installed(runtime: str) -> bool:
    """Whether ``runtime``'s package (and the exporter, ``onnxscript``) can be imported."""
    if runtime == "torch":
        return True
    return (importlib.util.find_spec(_PACKAGES[runtime]) is not None
            and importlib.util.find_spec("onnxscript") is not None)


def check_runtime(runtime: str, what: str = "runtime") -> str:
    if runtime not in RUNTIMES:
        raise MedSAMError(f"{what} must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


def resolve_runtime(runtime: str | None, arch: str, device: torch.device) -> str:
    """The runtime that encodes: ``auto`` (or None) is ``$MEDSAM_RUNTIME`` when set, else OpenVINO, then
    ONNX Runtime, for LiteMedSAM on the CPU, and torch otherwise. An exported runtime asked for
    where it cannot serve (CUDA, a ViT-B model, the package missing) is refused with the reason."""
    asked = runtime or "auto"
    if asked == "auto" and os.environ.get(RUNTIME_ENV):
        asked = check_runtime(os.environ[RUNTIME_ENV], f"${RUNTIME_ENV}")
    check_runtime(asked)
    if asked == "torch":
        return "torch"
    serves = device.type == "cpu" and arch == "lite"
    if asked == "auto":
        return next((r for r in EXPORTED if installed(r)), "torch") if serves else "torch"
    if not serves:
        raise MedSAMError(f"runtime {asked!r} runs the exported LiteMedSAM on the CPU; this model is {arch!r} on "
                          f"{device.type}: use runtime 'torch' (or 'auto')")
    if not installed(asked):
        raise MedSAMError(f"runtime {asked!r} needs the Python packages {_PACKAGES[asked]} and onnxscript: "
                          f"pip install -r requirements.txt")
    return asked


# --- what the exported graphs compute --------------------------------------------------------------

class PromptDecoder(nn.Module):
    """SAM's prompt encoder + mask decoder from (coords, labels) prompts, as SAM's own ONNX model
    embeds them: (1, 256, h, w) embedding, (N, P, 2) coords, (N, P) labels -> (N, 1, 256, 256)
    logits, (N, 1) predicted IoU. Equal to ``prompt_encoder(points, boxes)`` + ``mask_decoder``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.prompt_encoder, self.mask_decoder = model.prompt_encoder, model.mask_decoder

    def forward(self, embedding: Tensor, coords: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        pe = self.prompt_encoder
        points = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)  # pixel centres
        lab = labels[..., None]
        points = torch.where(lab == -1, torch.zeros_like(points) + pe.not_a_point_embed.weight, points)
        for i in range(pe.num_point_embeddings):
            points = torch.where(lab == i, points + pe.point_embeddings[i].weight, points)
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(coords.shape[0], -1, *pe.image_embedding_size)
        logits, iou = self.mask_decoder.predict_masks(embedding, pe.get_dense_pe(), points, dense)
        if paper.MULTIMASK_OUTPUT:
            raise MedSAMError("the exported decoder gives the single-mask output only")
        return logits[:, :1], iou[:, :1]


def box_prompts(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) boxes (x0, y0, x1, y1, model-input pixels) as (N, 2, 2) corner coords and labels 2, 3."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return boxes.reshape(-1, 2, 2), np.tile(np.array([[2, 3]], dtype=np.int64), (len(boxes), 1))


# --- the cache of exported files -------------------------------------------------------------------

def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's own weights: every state-dict entry's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def exported_dir() -> Path:
    return cache_dir() / "exported"


def _stat_key(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path), stat.st_size, stat.st_mtime_ns


_VERIFIED: set[tuple] = set()  # (path, size, mtime) of ONNX files whose SHA-256 matched their record here


def _record_ok(onnx_file: Path, record_file: Path, weights: str) -> bool:
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not (isinstance(record, dict) and record.get("weights_sha256") == weights and onnx_file.is_file()):
        return False
    key = (_stat_key(onnx_file), record.get("onnx_sha256"))
    if key not in _VERIFIED:  # hashed once per file state and process (each predictor would rehash 28 MB)
        if record.get("onnx_sha256") != sha256_file(onnx_file):
            return False
        _VERIFIED.add(key)
    return True


NAMES = {"encoder": (["image"], ["embedding"]),
         "decoder": (["embedding", "coords", "labels"], ["low_res_logits", "iou"])}


def export_onnx(component: str, module: nn.Module, example: tuple, dynamic_shapes=None,
                folder: Path | None = None) -> Path:
    """The ONNX file of ``module`` (exported now unless the cache holds it, verified, for these weights)."""
    weights = weights_sha256(module)
    folder = Path(folder) if folder is not None else exported_dir()
    stem = f"{component}-{weights[:16]}-v{EXPORT_VERSION}"
    onnx_file, record_file = folder / f"{stem}.onnx", folder / f"{stem}.json"
    if _record_ok(onnx_file, record_file, weights):
        return onnx_file
    log.info("exporting %s to %s (once for these weights)", component, onnx_file)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedSAMError(f"cannot create the export cache {folder} ({exc.strerror}); set $MEDSAM_CACHE_DIR "
                          "to a writable folder") from None
    try:
        with atomic_path(onnx_file) as tmp, warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            inputs, outputs = NAMES[component]
            torch.onnx.export(module, example, str(tmp), dynamo=True, opset_version=OPSET, external_data=False,
                              dynamic_shapes=dynamic_shapes, verbose=False, input_names=inputs,
                              output_names=outputs)
    except MedSAMError:
        raise
    except Exception as exc:  # the exporter's own errors: name what failed, keep the cache clean
        raise MedSAMError(f"exporting {component} to ONNX failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); use runtime 'torch'") from exc
    record = {"component": component, "weights_sha256": weights, "onnx_sha256": sha256_file(onnx_file),
              "export_version": EXPORT_VERSION, "opset": OPSET, "torch": torch.__version__}
    atomic_write_text(record_file, json.dumps(record, indent=1))
    return onnx_file


# --- one compiled model on one runtime -------------------------------------------------------------

_OV_CORE = None


class Session:
    """An ONNX file compiled for ``runtime`` on the CPU with ``threads`` threads; call with numpy arrays."""

    def __init__(self, onnx_file: Path, runtime: str, threads: int, precision: str = "float32"):
        if precision not in PRECISIONS:
            raise MedSAMError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.runtime, self.precision, self.threads = runtime, precision, threads
        self._lock = threading.Lock()  # an OpenVINO infer request serves one call at a time
        if runtime == "openvino":
            global _OV_CORE
            import openvino as ov

            _OV_CORE = _OV_CORE or ov.Core()
            hint = {"float32": "f32", "bfloat16": "bf16"}[precision]
            compiled = _OV_CORE.compile_model(str(onnx_file), "CPU", {
                "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
            self._request = compiled.create_infer_request()
        elif runtime == "onnxruntime":
            if precision != "float32":
                raise MedSAMError("precision 'bfloat16' is an OpenVINO option; ONNX Runtime runs float32")
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.log_severity_level = 3
            self._session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
            self._names = [i.name for i in self._session.get_inputs()]
        else:
            raise MedSAMError(f"runtime {runtime!r} does not run ONNX files (use one of {', '.join(EXPORTED)})")

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        if self.runtime == "openvino":
            with self._lock:
                out = self._request.infer(dict(enumerate(arrays)))
                return [np.array(out[i], copy=True) for i in range(len(out))]  # the request reuses its buffers
        return self._session.run(None, dict(zip(self._names, arrays)))


def _threads(threads: int | None) -> int:
    return int(threads) if threads else max(1, torch.get_num_threads())


_SESSIONS: dict[tuple, Session] = {}


def session_for(onnx_file: Path, runtime: str, threads: int, precision: str = "float32") -> Session:
    """One compiled ``Session`` per (file state, runtime, threads, precision) in this process, shared by
    every predictor of the same weights: compiling costs about 0.4 s and 170 MiB each time (calls are
    serialised by the session's lock)."""
    key = (_stat_key(onnx_file), runtime, threads, precision)
    if key not in _SESSIONS:
        _SESSIONS[key] = Session(onnx_file, runtime, threads, precision)
    return _SESSIONS[key]


class ExportedEncoder:
    """(B, 3, S, S) float32 model input -> (B, 256, 64, 64) float32 embeddings (one image at a time:
    batching measured no faster on the CPU)."""

    def __init__(self, encoder: nn.Module, runtime: str, precision: str = "float32", threads: int | None = None,
                 image_size: int = paper.LITE_IMAGE_SIZE):
        example = (torch.zeros(1, 3, image_size, image_size),)
        self.onnx_file = export_onnx("encoder", encoder, example)
        self.session = session_for(self.onnx_file, runtime, _threads(threads), precision)
        self.path = f"{runtime}-cpu-{precision}"

    def __call__(self, batch: Tensor) -> Tensor:
        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(np.concatenate([self.session(x[i:i + 1])[0] for i in range(len(x))]))


def encoder_for(encoder: nn.Module, runtime: str, asked: str | None) -> "ExportedEncoder | None":
    """The exported encoder for a resolved ``runtime`` (None for torch). When the runtime was chosen
    automatically and exporting fails (an unwritable cache, an exporter error), the warning says why
    and torch encodes instead; a runtime asked for by name raises."""
    if runtime not in EXPORTED:
        return None
    try:
        return ExportedEncoder(encoder, runtime)
    except MedSAMError as exc:
        if (asked or "auto") != "auto" or os.environ.get(RUNTIME_ENV):
            raise
        warnings.warn(f"{exc}; encoding with torch instead", RuntimeWarning, stacklevel=3)
        return None


def decoder_export_args(model: nn.Module) -> tuple:
    """``export_onnx``'s arguments for ``PromptDecoder(model)``: any number of prompts and points."""
    h, w = model.prompt_encoder.image_embedding_size
    example = (torch.zeros(1, 256, h, w), torch.zeros(2, 2, 2), torch.tensor([[2, 3], [2, 3]]))
    n, p = torch.export.Dim("prompts", min=1, max=4096), torch.export.Dim("points", min=1, max=256)
    return "decoder", PromptDecoder(model).eval(), example, {"embedding": None, "coords": {0: n, 1: p},
                                                             "labels": {0: n, 1: p}}


class ExportedDecoder:
    """``PromptDecoder`` exported: (embedding (1, 256, h, w), coords (N, P, 2), labels (N, P)) ->
    (logits (N, 1, 256, 256), IoU (N,)) as torch tensors."""

    def __init__(self, model: nn.Module, runtime: str, threads: int | None = None):
        self.onnx_file = export_onnx(*decoder_export_args(model))
        self.session = session_for(self.onnx_file, runtime, _threads(threads))

    def __call__(self, embedding, coords, labels) -> tuple[Tensor, Tensor]:
        emb = torch.as_tensor(embedding).detach().to("cpu", torch.float32).reshape(1, 256, *np.shape(embedding)[-2:])
        logits, iou = self.session(emb.contiguous().numpy(), np.asarray(coords, dtype=np.float32),
                                   np.asarray(labels, dtype=np.int64))
        return torch.from_numpy(logits), torch.from_numpy(iou[:, 0])
