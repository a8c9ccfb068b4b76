"""Bad inputs, one table: every row gives exit code 2, one ``error:`` line naming the file or option,
no traceback, nothing written, every input byte-for-byte unchanged (``bad_input_helpers``).

The rows are grouped by class (issue 9): data loss (output = an input), silent wrong answers
(non-finite voxels in every format, broken DICOM series, lossy or unknown output formats, unknown
modalities, empty masks), hangs (pipes, devices, sockets), stores a failing run must not change,
errors that used to reach the catch-all, the smaller ones (pickled code, ITK warnings,
refused archives), and the cheap bad inputs of the commands later issues added (embed, train,
evaluate: issues 10-12; those needing a real model or embedding store stay in their own files). Inputs are generated in the test. Rows that must fail before model loading
(all but those about checkpoints) run with model loading forbidden.
"""
from __future__ import annotations

import functools
import gzip
import http.server
import io
import json
import os
import socket
import struct
import tarfile
import threading
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from bad_input_helpers import BadInput, check_bad_input, run_cli, run_row, snapshot, write_dicom_series, write_manifest
from medsam_lib.cli import main
from medsam_lib.data.curate import curate
from medsam_lib.data.store import CuratedDataset
from medsam_lib.fileio import MedSAMError
from medsam_lib.models.predictor import BoxPredictor

BOX = ["--box", "4,4,40,40"]


# --- input builders -------------------------------------------------------------------------------

def _ramp(h=64, w=80) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def _png(path: Path, array: np.ndarray | None = None) -> Path:
    Image.fromarray(_ramp() if array is None else array).save(path)
    return path


def _volume(path: Path, array: np.ndarray | None = None, spacing=(0.8, 0.8, 1.0)) -> Path:
    array = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32) if array is None else array
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _nonfinite(value: float, dtype=np.float32) -> np.ndarray:
    array = np.random.default_rng(1).normal(size=(3, 32, 32)).astype(dtype)
    array[1, 5, 7] = value
    return array


def _nifti_by_nibabel(path: Path, array: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), np.eye(4)), path)
    return path


def _dicom_series(folder: Path, n: int = 5) -> Path:
    return write_dicom_series(folder, [(0, 0, z) for z in range(n)])


def _huge_png(path: Path) -> Path:
    """A PNG whose header claims 100000 x 100000 pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket_file(path: Path) -> Path:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    _SOCKETS.append(sock)  # kept open while the test runs
    return path


_SOCKETS: list[socket.socket] = []


def _pair_folders(tmp: Path, masks: dict[str, np.ndarray]) -> tuple[Path, Path]:
    images, mask_dir = tmp / "images", tmp / "masks"
    images.mkdir()
    mask_dir.mkdir()
    for name, mask in masks.items():
        _png(images / f"{name}.png", _ramp(64, 64))
        Image.fromarray(mask).save(mask_dir / f"{name}.png")
    return images, mask_dir


def _blob() -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 16:40] = 255
    return mask


_manifest = write_manifest


def _good_store(tmp: Path) -> Path:
    """A finished store of cases a, b, c (seed 0) in tmp/store, from tmp/first.json."""
    _pair_folders(tmp, {c: _blob() for c in ("a", "b", "c")})
    curate(_manifest(tmp, "first", ["a", "b", "c"]), tmp / "store", progress=False)
    return tmp / "store"


def _served_archive(ctx, tmp: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    name = f"{tmp.name}.tar.gz"
    with tarfile.open(ctx.served / name, "w:gz") as tf:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for member, target in (links or {}).items():
            info = tarfile.TarInfo(member)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    manifest = {
        "schema_version": 1, "name": "served", "description": "archive served by the test",
        "data_root": {"kind": "argument"},
        "obtain": {"method": "direct", "source_url": ctx.url, "checksums_verified": False, "layout": ["x"],
                   "files": [{"url": f"{ctx.url}/{name}", "file_name": name, "extract": True}]},
        "datasets": [{"name": "served", "title": "t", "modality": "MR", "dimensionality": "3D", "citation": "c",
                      "license": {"name": "n", "terms": "t"}, "images": [{"key": "mr", "modality": "MR"}],
                      "masks": [{"key": "label", "encoding": "label"}], "targets": [{"name": "x", "labels": [1]}],
                      "cases": [{"id": "a", "images": {"mr": "a.nrrd"}, "masks": {"label": "b.nrrd"}}]}]}
    path = tmp / "served.json"
    path.write_text(json.dumps(manifest))
    return path


def _evil_pickle(path: Path, marker: Path) -> Path:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"w": 1, "x": Evil()}, protocol=4))
    return path


def _seg(image: str, out: str, *extra: str) -> list[str]:
    return ["segment", "--image", image, *BOX, "--out", out, *extra]


# --- the table ------------------------------------------------------------------------------------

def _rows() -> list[BadInput]:
    r = []

    def row(name, build, *expect, **kw):
        r.append(BadInput(name, build, tuple(expect), **kw))

    # 1. data loss: the output is an input (directly, through links, inside an input folder)
    row("out_is_the_image", lambda t, c: _seg(str(_png(t / "in.png")), str(t / "in.png")), "in.png", "is the input")
    row("out_is_the_image_via_dotdot", lambda t, c: (_png(t / "in.png"), (t / "d").mkdir(),
                                                     _seg(str(t / "in.png"), str(t / "d" / ".." / "in.png")))[-1],
        "in.png", "is the input")
    row("out_symlink_to_the_image", lambda t, c: (_png(t / "in.png"), os.symlink(t / "in.png", t / "link.png"),
                                                  _seg(str(t / "in.png"), str(t / "link.png")))[-1],
        "link.png", "is the input")
    row("out_hardlink_to_the_image", lambda t, c: (_png(t / "in.png"), os.link(t / "in.png", t / "hard.png"),
                                                   _seg(str(t / "in.png"), str(t / "hard.png")))[-1],
        "hard.png", "is the input")
    row("out_inside_the_dicom_folder", lambda t, c: _seg(str(_dicom_series(t / "dcm")), str(t / "dcm" / "m.nii.gz")),
        "m.nii.gz", "lies inside the input")
    row("out_is_the_volume", lambda t, c: _seg(str(_volume(t / "v.nrrd")), str(t / "v.nrrd")), "v.nrrd", "is the input")
    row("curate_out_is_the_data_folder", lambda t, c: (_pair_folders(t, {"a": _blob()}),
                                                       ["data", "curate", "--manifest", str(_manifest(t, "m", ["a"])),
                                                        "--out", str(t)])[-1],
        "--out", "holds other files")
    row("curate_out_over_an_input_file", lambda t, c: (_pair_folders(t, {"a": _blob()}),
                                                       ["data", "curate", "--manifest", str(_manifest(t, "m", ["a"])),
                                                        "--out", str(t / "images" / "a.png")])[-1],
        "a.png", "a file is in the way")

    # 2a. non-finite voxels: refused in every format (NaN, +inf, -inf)
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        for label, value in (("nan", np.nan), ("posinf", np.inf), ("neginf", -np.inf)):
            row(f"nonfinite_{label}_{suffix.strip('.').replace('.', '_')}",
                functools.partial(lambda t, c, s, v: _seg(str(_volume(t / f"bad{s}", _nonfinite(v))),
                                                          str(t / "m.nii.gz"), "--slice", "1"), s=suffix, v=value),
                f"bad{suffix}", "NaN or infinite")
    row("nonfinite_float64_nifti_by_nibabel",
        lambda t, c: _seg(str(_nifti_by_nibabel(t / "f64.nii.gz", _nonfinite(np.inf, np.float64))), str(t / "m.nii.gz")),
        "f64.nii.gz", "1 voxel(s) are NaN or infinite", "(1, 5, 7)")
    row("nonfinite_float_tiff", lambda t, c: (Image.fromarray(_nonfinite(-np.inf)[1]).save(t / "f.tif"),
                                              _seg(str(t / "f.tif"), str(t / "m.png")))[-1],
        "f.tif", "NaN or infinite")
    row("nonfinite_in_a_curated_mask", lambda t, c: (_volume(t / "lab.nrrd", _nonfinite(np.inf)[1:2]),
                                                     _volume(t / "img.nrrd", _nonfinite(0.0)[1:2]),
                                                     _curate_volume_manifest(t), ["data", "curate", "--manifest",
                                                     str(t / "vol.json"), "--out", str(t / "out")])[-1],
        "lab.nrrd", "NaN or infinite")

    row("volume_header_claims_terabytes_nii", lambda t, c: _seg(str(_header_bomb(t / "bomb.nii")), str(t / "m.nii.gz")),
        "bomb.nii", "30000 x 30000 x 30000", "truncated or corrupt")
    row("volume_header_claims_terabytes_nii_gz",
        lambda t, c: _seg(str(_header_bomb(t / "bomb.nii.gz")), str(t / "m.nii.gz")), "bomb.nii.gz", "header claims")

    # 2b. DICOM series that GDCM would misread
    row("dicom_truncated_slice", lambda t, c: (_dicom_series(t / "dcm"), _truncate(t / "dcm" / "s2.dcm"),
                                               _seg(str(t / "dcm"), str(t / "m.nii.gz")))[-1],
        "dcm", "s2.dcm", "could not be read")
    row("dicom_missing_middle_slice", lambda t, c: (_dicom_series(t / "dcm"), (t / "dcm" / "s2.dcm").unlink(),
                                                    _seg(str(t / "dcm"), str(t / "m.nii.gz")))[-1],
        "dcm", "not evenly spaced")
    row("folder_without_dicom_no_itk_warning", lambda t, c: ((t / "notes").mkdir(), (t / "notes" / "a.txt").write_text("x"),
                                                             _seg(str(t / "notes"), str(t / "m.nii.gz")))[-1],
        "notes", "no DICOM series")

    row("multipage_tiff_is_a_stack_not_an_image", lambda t, c: (Image.fromarray(_ramp()).save(
        t / "stack.tif", save_all=True, append_images=[Image.fromarray(_ramp()[::-1])]),
        _seg(str(t / "stack.tif"), str(t / "m.png")))[-1], "stack.tif", "2 frames")
    row("animated_gif_mask_in_curation", lambda t, c: (_pair_folders(t, {"a": _blob()}), (t / "masks" / "a.png").unlink(),
                                                       Image.fromarray(_blob()).save(t / "masks" / "a.gif", save_all=True,
                                                                                     append_images=[Image.fromarray(_blob().T)]),
                                                       _gif_manifest(t))[-1], "a.gif", "2 frames")

    # 2c. lossy, detached or unknown output formats: refused before anything is read or loaded
    for suffix in (".jpg", ".jpeg", ".webp", ".JPG"):
        row(f"lossy_output{suffix}", functools.partial(
            lambda t, c, s: _seg(str(_png(t / "in.png")), str(t / f"m{s}")), s=suffix), f"m{suffix}", "lossy")
    for suffix in (".mhd", ".txt", ""):
        row(f"unsupported_output_{suffix.strip('.') or 'nosuffix'}", functools.partial(
            lambda t, c, s: _seg(str(_png(t / "in.png")), str(t / f"mask{s}")), s=suffix), f"mask{suffix}")

    # 2d. unknown modality (segment and data init), listing the known ones
    row("segment_unknown_modality", lambda t, c: _seg(str(_png(t / "in.png")), str(t / "m.png"), "--modality", "XYZ"),
        "--modality 'XYZ'", "CT, MR")
    row("init_unknown_modality", lambda t, c: _init(t, {"a": _blob()}, "XYZ"), "--modality 'XYZ'", "Ultrasound")

    # 2e. empty masks: data init and data curate agree (both refuse the case, naming the mask)
    row("init_one_empty_mask", lambda t, c: _init(t, {"a": _blob(), "b": np.zeros((64, 64), np.uint8)}),
        "mask b.png is empty", "--skip-unpaired")
    row("init_all_masks_empty", lambda t, c: _init(t, {"a": np.zeros((64, 64), np.uint8)}),
        "mask a.png is empty", "no usable pair")
    row("curate_empty_mask", lambda t, c: (_pair_folders(t, {"a": np.zeros((64, 64), np.uint8)}),
                                           ["data", "curate", "--manifest", str(_manifest(t, "m", ["a"])),
                                            "--out", str(t / "out")])[-1],
        "m/a", "a.png is empty")

    # 3. hangs and odd file types: refused before anything opens them (in-process rows: a pipe that is
    #    opened is detected and unblocked by the helper's watcher; this first row runs end to end)
    row("image_is_a_fifo", lambda t, c: _seg(str(_fifo(t / "pipe.png")), str(t / "m.png")),
        "pipe.png", "named pipe", subprocess=True, timeout=60)
    row("manifest_is_a_fifo", lambda t, c: ["data", "validate", str(_fifo(t / "m.json"))], "m.json", "named pipe")
    row("model_is_a_fifo", lambda t, c: _seg(str(_png(t / "in.png")), str(t / "m.png"), "--model", str(_fifo(t / "w.pth"))),
        "w.pth", "named pipe", model_allowed=True)
    row("fifo_inside_dicom_folder", lambda t, c: (_dicom_series(t / "dcm"), _fifo(t / "dcm" / "s9.dcm"),
                                                  _seg(str(t / "dcm"), str(t / "m.nii.gz")))[-1],
        "s9.dcm", "named pipe")
    row("image_is_a_symlink_loop", lambda t, c: (os.symlink(t / "b.png", t / "a.png"), os.symlink(t / "a.png", t / "b.png"),
                                                 _seg(str(t / "a.png"), str(t / "m.png")))[-1],
        "a.png", "symbolic links")
    row("curate_mask_is_a_fifo", lambda t, c: (_pair_folders(t, {"a": _blob()}), (t / "masks" / "a.png").unlink(),
                                               _fifo(t / "masks" / "a.png"),
                                               ["data", "curate", "--manifest", str(_manifest(t, "m", ["a"])),
                                                "--out", str(t / "out")])[-1],
        "a.png", "named pipe")
    row("image_is_a_device", lambda t, c: _seg("/dev/null", str(t / "m.png")), "/dev/null", "device file")
    row("image_is_a_socket", lambda t, c: _seg(str(_socket_file(t / "s.png")), str(t / "m.png")), "s.png", "socket")
    row("out_is_a_fifo", lambda t, c: _seg(str(_png(t / "in.png")), str(_fifo(t / "o.png"))), "o.png", "named pipe")

    # 4. a failing curation never changes a store, and leaves no half-made new one
    row("curate_failing_run_keeps_the_existing_store",
        lambda t, c: (_good_store(t), _png(t / "images" / "x.png", _ramp(64, 64)),
                      (t / "masks" / "x.png").write_bytes(b"\x89PNG truncated"),
                      ["data", "curate", "--manifest", str(_manifest(t, "other", ["a", "x"])), "--seed", "7",
                       "--out", str(t / "store")])[-1],
        "other/x", "x.png", ignore=("store/.pending",))
    row("curate_new_store_not_left_half_made",
        lambda t, c: (_pair_folders(t, {"a": _blob()}), (t / "masks" / "a.png").write_bytes(b"junk"),
                      ["data", "curate", "--manifest", str(_manifest(t, "m", ["a"])), "--out", str(t / "new")])[-1],
        "m/a", "a.png")
    row("curate_out_below_a_file", lambda t, c: (_pair_folders(t, {"a": _blob()}), (t / "f").write_text("x"),
                                                 ["data", "curate", "--manifest", str(_manifest(t, "m", ["a"])),
                                                  "--out", str(t / "f" / "store")])[-1],
        "store", "is a file, not a folder")
    row("init_fifo_among_the_images", lambda t, c: (_init(t, {"a": _blob()}), _fifo(t / "images" / "pipe.png"),
                                                    Image.fromarray(_blob()).save(t / "masks" / "pipe.png"),
                                                    _init_argv(t))[-1],
        "image pipe.png", "named pipe")
    row("init_images_is_a_file", lambda t, c: ((t / "imgs").write_text("x"), _pair_folders(t, {"a": _blob()}),
                                               ["data", "init", "--images", str(t / "imgs"), "--masks", str(t / "masks"),
                                                "--modality", "CT", "--out", str(t / "m.json")])[-1],
        "imgs", "is a file, not a folder")
    row("curate_out_is_a_file", lambda t, c: (_pair_folders(t, {"a": _blob()}), (t / "f").write_text("x"),
                                              ["data", "curate", "--manifest", str(_manifest(t, "m", ["a"])),
                                               "--out", str(t / "f")])[-1],
        "--out", "a file is in the way")

    # 5. what used to reach the catch-all (exit 1, exception type, often no file named)
    row("png_decompression_bomb", lambda t, c: _seg(str(_huge_png(t / "huge.png")), str(t / "m.png")),
        "huge.png", "huge image")
    row("binary_manifest", lambda t, c: ((t / "bin.json").write_bytes(bytes(range(256)) * 8),
                                         ["data", "curate", "--manifest", str(t / "bin.json"), "--out", str(t / "o")])[-1],
        "bin.json", "not a text file")
    row("deeply_nested_manifest", lambda t, c: ((t / "deep.json").write_text('{"a":' * 100000 + "1" + "}" * 100000),
                                                ["data", "validate", str(t / "deep.json")])[-1],
        "deep.json", "nested too deeply")
    row("out_is_an_existing_folder", lambda t, c: ((t / "x.png").mkdir(), _seg(str(_png(t / "in.png")), str(t / "x.png")))[-1],
        "x.png", "folder of that name is in the way")
    row("out_parent_is_a_file", lambda t, c: ((t / "sub").write_text("x"),
                                              _seg(str(_png(t / "in.png")), str(t / "sub" / "m.png")))[-1],
        "sub", "is a file, not a folder")
    row("out_folder_missing", lambda t, c: _seg(str(_png(t / "in.png")), str(t / "nope" / "m.png")), "nope", "does not exist")
    row("init_out_is_a_folder", lambda t, c: ((t / "m.json").mkdir(), _init(t, {"a": _blob()}, out=t / "m.json"))[-1],
        "m.json", "folder of that name is in the way")
    row("init_out_parent_is_a_file", lambda t, c: ((t / "f").write_text("x"), _init(t, {"a": _blob()}, out=t / "f" / "m.json"))[-1],
        "is a file, not a folder")
    row("device_bogus", lambda t, c: _seg(str(_png(t / "in.png")), str(t / "m.png"), "--device", "bogus"),
        "--device 'bogus'", "cpu")
    if not _cuda():
        row("device_cuda_without_gpu", lambda t, c: _seg(str(_png(t / "in.png")), str(t / "m.png"), "--device", "cuda"),
            "--device 'cuda'", "no CUDA GPU", "--device cpu")
    row("model_is_a_text_file", lambda t, c: ((t / "notes.txt").write_text("some notes about the model\n"),
                                              _seg(str(_png(t / "in.png")), str(t / "m.png"), "--model", str(t / "notes.txt")))[-1],
        "notes.txt", "not a PyTorch checkpoint", "text file", model_allowed=True)

    # 6. smaller: pickled code, refused archives, and the inputs the suite always had
    row("model_pickle_calls_os_system", lambda t, c: _seg(str(_png(t / "in.png")), str(t / "m.png"), "--model",
                                                          str(_evil_pickle(t / "evil.pth", t / "PWNED"))),
        "evil.pth", "system", "would run", "weights_only=True", model_allowed=True)
    row("fetch_refuses_an_escaping_archive", lambda t, c: ["data", "fetch", str(_served_archive(
        c, t, {"ok.txt": b"fine", "../escape.txt": b"evil"})), "--root", str(t / "root")],
        "escape.txt", "climbs out")
    row("fetch_refuses_an_escaping_symlink", lambda t, c: ["data", "fetch", str(_served_archive(
        c, t, {"ok.txt": b"fine"}, {"link": "../../outside"})), "--root", str(t / "root")],
        "link", "outside the target folder")
    row("fetch_missing_file", lambda t, c: ["data", "fetch", _missing_download(c, t), "--root", str(t / "root")],
        "HTTP 404")
    row("empty_image_file", lambda t, c: ((t / "empty.png").write_bytes(b""), _seg(str(t / "empty.png"), str(t / "m.png")))[-1],
        "empty.png", "empty")
    row("truncated_png", lambda t, c: ((t / "cut.png").write_bytes(_png(t / "full.png").read_bytes()[:300]),
                                       _seg(str(t / "cut.png"), str(t / "m.png")))[-1],
        "cut.png", "truncated")
    row("truncated_nifti", lambda t, c: ((t / "cut.nii.gz").write_bytes(gzip.compress(gzip.decompress(
        _volume(t / "v.nii.gz").read_bytes())[:1500])), _seg(str(t / "cut.nii.gz"), str(t / "m.nii.gz")))[-1],
        "cut.nii.gz", "truncated or corrupt")
    row("constant_image", lambda t, c: _seg(str(_png(t / "flat.png", np.full((40, 40), 7, np.uint8))), str(t / "m.png")),
        "flat.png", "constant")
    for box, expected in (("-5,0,20,20", "outside"), ("10,10,81,20", "outside"), ("30,10,10,20", "inverted"),
                          ("10,10,10,20", "zero area"), ("nan,0,10,10", "non-finite"), ("inf,0,10,10", "non-finite")):
        row(f"box_{expected.replace(' ', '_')}_{box}", functools.partial(
            lambda t, c, b: ["segment", "--image", str(_png(t / "in.png")), f"--box={b}", "--out", str(t / "m.png")],
            b=box), expected)
    row("box_malformed", lambda t, c: ["segment", "--image", str(_png(t / "in.png")), "--box", "1,2,3",
                                       "--out", str(t / "m.png")], "--box", "four numbers")
    row("unknown_model_name", lambda t, c: _seg(str(_png(t / "in.png")), str(t / "m.png"), "--model", "vit_z"),
        "unknown model name 'vit_z'", "litemedsam", model_allowed=True)
    row("slice_out_of_range", lambda t, c: _seg(str(_volume(t / "v.nii.gz")), str(t / "m.nii.gz"), "--slice", "3"),
        "v.nii.gz", "slice 3 out of range")
    row("slice_on_a_2d_image", lambda t, c: _seg(str(_png(t / "in.png")), str(t / "m.png"), "--slice", "0"),
        "in.png", "2D image")
    row("no_such_image", lambda t, c: _seg(str(t / "missing.png"), str(t / "m.png")), "missing.png", "no such file")

    # 7. the commands later issues added (embed: issue 10, train: 11, evaluate: 12); rows that need a
    #    real model or a real embedding store stay in those commands' own test files
    row("embed_curated_missing", lambda t, c: _embed(t, t / "nope"), "nope")
    row("embed_curated_empty_folder", lambda t, c: ((t / "empty").mkdir(), _embed(t, t / "empty"))[-1], "empty")
    row("embed_curated_not_a_store", lambda t, c: ((t / "pics").mkdir(), _png(t / "pics" / "a.png"),
                                                   _embed(t, t / "pics"))[-1], "pics")
    row("embed_curated_is_a_file", lambda t, c: _embed(t, _png(t / "a.png")), "a.png", "a file")
    row("embed_dtype_bogus", lambda t, c: _embed(t, _good_store(t), "--dtype", "bogus"), "--dtype", "bogus", "float16")
    row("embed_batch_size_zero", lambda t, c: _embed(t, _good_store(t), "--batch-size", "0"), "--batch-size", "0")
    row("embed_batch_size_negative", lambda t, c: _embed(t, _good_store(t), "--batch-size", "-3"), "--batch-size", "-3")
    row("embed_chunk_size_zero", lambda t, c: _embed(t, _good_store(t), "--chunk-size", "0"), "--chunk-size", "0")
    row("embed_device_bogus", lambda t, c: _embed(t, _good_store(t), "--device", "bogus"), "--device", "bogus")
    row("embed_check_missing_store", lambda t, c: ["embed", "--check", "--out", str(t / "nostore")], "nostore")
    row("embed_out_is_a_file", lambda t, c: ((t / "emb").write_text("x"), _embed(t, _good_store(t)))[-1], "emb")
    row("embed_out_is_the_curated_store", lambda t, c: (_good_store(t), ["embed", "--curated", str(t / "store"),
                                                                         "--out", str(t / "store")])[-1], "store")

    row("train_no_config", lambda t, c: ["train"], "--config")
    row("train_config_missing", lambda t, c: ["train", "--config", str(t / "nope.toml")], "nope.toml", "not found")
    row("train_config_wrong_suffix", lambda t, c: ((t / "run.json").write_text("{}"),
                                                   ["train", "--config", str(t / "run.json")])[-1], "run.json", ".toml")
    row("train_config_not_toml", lambda t, c: ((t / "bad.toml").write_text("steps = = 3\n[[["),
                                               ["train", "--config", str(t / "bad.toml")])[-1], "bad.toml", "not valid TOML")
    row("train_config_not_yaml", lambda t, c: ((t / "bad.yaml").write_text("steps: [1, 2\n  - x: : y\n"),
                                               ["train", "--config", str(t / "bad.yaml")])[-1], "bad.yaml", "not valid YAML", "line 2")
    row("train_config_yaml_a_list", lambda t, c: ((t / "list.yaml").write_text("- 1\n- 2\n"),
                                                  ["train", "--config", str(t / "list.yaml")])[-1], "list.yaml", "table of keys")
    row("train_config_binary", lambda t, c: ((t / "bin.toml").write_bytes(bytes(range(256)) * 4),
                                             ["train", "--config", str(t / "bin.toml")])[-1], "bin.toml")
    row("train_unknown_key", lambda t, c: _train(t, stepz=3), "run.toml", "unknown key 'stepz'")
    row("train_wrong_type", lambda t, c: _train(t, steps='"ten"'), "run.toml", "steps", "int")
    row("train_steps_zero", lambda t, c: _train(t, steps=0), "run.toml", "steps", ">=")
    row("train_bad_recipe", lambda t, c: _train(t, recipe='"bogus"'), "run.toml", "recipe", "bogus")
    row("train_bad_device", lambda t, c: _train(t, device='"bogus"'), "run.toml", "device", "bogus")
    row("train_missing_required_key", lambda t, c: _train(t, drop="steps"), "run.toml", "'steps' is required")
    row("train_curated_store_missing", lambda t, c: _train(t, curated='"nostore"'), "run.toml", "nostore",
        "not a curated store")
    row("train_embeddings_store_missing", lambda t, c: _train(t, store=True, embeddings='"noemb"'), "run.toml",
        "noemb", "not an embedding store")
    row("train_out_holds_a_finished_run", lambda t, c: _train(t, store=True, finished=True), "run", "finished run",
        "--resume")
    row("train_out_holds_a_best_pt", lambda t, c: _train(t, store=True, best=True), "best.pt", "--resume")

    def pair(t, pred, gt, *extra, suffix=".png"):
        for name, array in (("pred", pred), ("gt", gt)):
            if suffix == ".png":
                Image.fromarray(array).save(t / f"{name}.png")
            else:
                sitk.WriteImage(sitk.GetImageFromArray(array), str(t / f"{name}{suffix}"))
        return ["evaluate", "--pred", str(t / f"pred{suffix}"), "--gt", str(t / f"gt{suffix}"), *extra]

    mask = (_blob() > 0).astype(np.uint8)
    row("evaluate_shapes_differ", lambda t, c: pair(t, mask, mask[:, :40]), "pred.png", "gt.png", "shape")
    row("evaluate_non_binary_mask", lambda t, c: pair(t, mask * np.arange(64, dtype=np.uint8)[:, None] % 5, mask),
        "pred.png", "binary")
    row("evaluate_4d_array", lambda t, c: pair(t, np.zeros((2, 3, 8, 8), np.uint8), np.zeros((2, 3, 8, 8), np.uint8),
                                               suffix=".nii.gz"), "pred.nii.gz", "4D")
    for spacing in ("nan,1", "0,1", "-1,1", "inf,1", "1,2,3,4", "a,b"):
        row(f"evaluate_spacing_{spacing}", functools.partial(
            lambda t, c, s: pair(t, mask, mask, f"--spacing={s}"), s=spacing), "--spacing", spacing)
    row("evaluate_spacing_3_values_on_2d", lambda t, c: pair(t, mask, mask, "--spacing", "1,1,1"), "--spacing", "2D")
    for tol in ("0", "-1", "nan"):
        row(f"evaluate_tolerance_{tol}", functools.partial(
            lambda t, c, v: pair(t, mask, mask, f"--tolerance-mm={v}"), v=tol), "--tolerance-mm", "> 0")
    row("evaluate_pred_missing", lambda t, c: (Image.fromarray(mask).save(t / "gt.png"),
                                               ["evaluate", "--pred", str(t / "p.png"), "--gt", str(t / "gt.png")])[-1],
        "p.png", "no such file")
    row("evaluate_gt_missing", lambda t, c: (Image.fromarray(mask).save(t / "pred.png"),
                                             ["evaluate", "--pred", str(t / "pred.png"), "--gt", str(t / "g.png")])[-1],
        "g.png", "no such file")
    row("evaluate_only_pred", lambda t, c: (Image.fromarray(mask).save(t / "pred.png"),
                                            ["evaluate", "--pred", str(t / "pred.png")])[-1], "--gt")
    row("evaluate_pred_is_junk", lambda t, c: ((t / "pred.png").write_bytes(b"junk" * 10),
                                               Image.fromarray(mask).save(t / "gt.png"),
                                               ["evaluate", "--pred", str(t / "pred.png"), "--gt", str(t / "gt.png")])[-1],
        "pred.png")
    row("evaluate_curated_missing", lambda t, c: ["evaluate", "--curated", str(t / "nostore"), "--model", "litemedsam",
                                                  "--out", str(t / "ev")], "nostore")
    row("evaluate_curated_without_model", lambda t, c: ["evaluate", "--curated", str(_good_store(t)), "--out",
                                                        str(t / "ev")], "--model")
    row("evaluate_curated_without_out", lambda t, c: ["evaluate", "--curated", str(_good_store(t)), "--model",
                                                      "litemedsam"], "--out")
    row("evaluate_out_is_a_file", lambda t, c: ((t / "ev").write_text("x"), ["evaluate", "--curated", str(_good_store(t)),
                                                "--model", "litemedsam", "--out", str(t / "ev")])[-1], "ev", "not a folder")
    row("evaluate_pair_and_curated", lambda t, c: pair(t, mask, mask, "--curated", str(_good_store(t)), "--model",
                                                       "litemedsam"), "--curated")
    row("evaluate_embeddings_missing", lambda t, c: ["evaluate", "--curated", str(_good_store(t)), "--model", "litemedsam",
                                                     "--out", str(t / "ev"), "--embeddings", str(t / "noemb")], "noemb")
    row("evaluate_volume_slices_without_source_root", lambda t, c: [
        "evaluate", "--curated", str(_good_store(t)), "--model", "litemedsam", "--out", str(t / "ev"),
        "--slices", "volume"], "--source-root")
    return r


def _embed(tmp: Path, curated: Path, *extra: str) -> list[str]:
    return ["embed", "--curated", str(curated), "--out", str(tmp / "emb"), "--no-progress", *extra]


def _train(tmp: Path, store: bool = False, finished: bool = False, best: bool = False, drop: str = "",
           **keys) -> list[str]:
    """train --config tmp/run.toml over a tiny curated store (``store``: built for real) into tmp/run."""
    if store:
        _good_store(tmp)
        (tmp / "emb").mkdir()  # a fake embedding store: train must refuse before reading it
        (tmp / "emb" / "store.json").write_text("{}")
    values = {"curated": '"store"', "embeddings": '"emb"', "out": '"run"', "steps": 3, "device": '"cpu"', **keys}
    values.pop(drop, None)
    (tmp / "run.toml").write_text("".join(f"{k} = {v}\n" for k, v in values.items()))
    if finished or best:
        import torch

        (tmp / "run").mkdir()
        if finished:
            from medsam_lib.models.finetuned import FORMAT, FORMAT_VERSION

            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "base": {}, "weights": {},
                        "trained_modules": [], "training": {"step": 3, "steps": 3}}, tmp / "run" / "last.pt")
        if best:
            (tmp / "run" / "best.pt").write_bytes(b"weights")
    return ["train", "--config", str(tmp / "run.toml"), "--quiet"]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _init(tmp: Path, masks: dict, modality: str = "Ultrasound", out: Path | None = None) -> list[str]:
    _pair_folders(tmp, masks)
    return _init_argv(tmp, modality, out)


def _init_argv(tmp: Path, modality: str = "Ultrasound", out: Path | None = None) -> list[str]:
    return ["data", "init", "--images", str(tmp / "images"), "--masks", str(tmp / "masks"), "--modality", modality,
            "--out", str(out or tmp / "mine.json")]


def _header_bomb(path: Path) -> Path:
    """A NIfTI whose header claims 30000^3 int16 voxels (54 TB) in a file of a few hundred bytes."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), path)
    raw = bytearray(gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes())
    struct.pack_into("<8h", raw, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


def _curate_volume_manifest(tmp: Path) -> Path:
    data = {
        "schema_version": 1, "name": "vol", "description": "d", "data_root": {"kind": "relative_to_manifest", "path": "."},
        "obtain": {"method": "local", "source_url": "generated"},
        "datasets": [{"name": "vol", "title": "t", "modality": "MR", "dimensionality": "3D", "citation": "c",
                      "license": {"name": "n", "terms": "t"}, "images": [{"key": "mr", "modality": "MR"}],
                      "masks": [{"key": "label", "encoding": "binary", "threshold": 0}],
                      "targets": [{"name": "x", "labels": [1]}],
                      "cases": [{"id": "a", "images": {"mr": "img.nrrd"}, "masks": {"label": "lab.nrrd"}}]}]}
    (tmp / "vol.json").write_text(json.dumps(data))
    return tmp / "vol.json"


def _gif_manifest(tmp: Path) -> list[str]:
    path = _manifest(tmp, "m", ["a"])
    path.write_text(path.read_text(encoding="utf-8").replace("masks/a.png", "masks/a.gif"))
    return ["data", "curate", "--manifest", str(path), "--out", str(tmp / "out")]


def _missing_download(ctx, tmp: Path) -> str:
    path = _served_archive(ctx, tmp, {"a": b"x"})
    (ctx.served / f"{tmp.name}.tar.gz").unlink()  # the server answers 404
    return str(path)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


ROWS = _rows()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    served = tmp_path_factory.mktemp("served")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield SimpleNamespace(served=served, url=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.shutdown()
    httpd.server_close()


def test_rows_are_unique():
    names = [r.name for r in ROWS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input(row, tmp_path, capfd, ctx):
    run_row(row, tmp_path, capfd, ctx)


# --- what the rows cannot say on their own --------------------------------------------------------

def test_the_failed_run_left_the_store_readable_and_a_rerun_finishes(tmp_path, capfd):
    store = _good_store(tmp_path)
    before = CuratedDataset(store).index
    _png(tmp_path / "images" / "x.png", _ramp(64, 64))
    (tmp_path / "masks" / "x.png").write_bytes(b"junk")
    other = _manifest(tmp_path, "other", ["a", "x"])
    code, _, err = run_cli(["data", "curate", "--manifest", str(other), "--seed", "7", "--out", str(store)], capfd)
    assert code == 2 and "x.png" in err
    info = json.loads((store / "curation.json").read_text(encoding="utf-8"))
    assert info["seed"] == 0 and list(info["manifests"]) == ["first"]
    with CuratedDataset(store) as ds:  # still openable, the same index
        assert ds.index.equals(before)
    Image.fromarray(_blob()).save(tmp_path / "masks" / "x.png")  # fixed: the rerun resumes and finishes
    report = curate(other, store, seed=7, progress=False)
    assert report.skipped == ["other/a"] and report.curated == ["other/x"]
    with CuratedDataset(store) as ds:
        assert set(ds.index["dataset"]) == {"first", "other"} and not (store / ".pending").exists()
        assert json.loads((store / "curation.json").read_text(encoding="utf-8"))["seed"] == 7


def test_an_interrupted_store_says_it_is_incomplete_and_how_to_finish(tmp_path):
    store = _good_store(tmp_path)
    (store / "index.csv").unlink()  # as a kill between the case files and the index would leave it
    with pytest.raises(MedSAMError, match="incomplete.*run data curate again to finish"):
        CuratedDataset(store)
    (store / "curation.json").rename(store / ".curation.next.json")  # killed while finishing
    with pytest.raises(MedSAMError, match="incomplete.*run data curate again to finish"):
        CuratedDataset(store)
    report = curate(tmp_path / "first.json", store, progress=False)
    assert report.skipped == ["first/a", "first/b", "first/c"]
    assert len(CuratedDataset(store).index) == 3 and not (store / ".curation.next.json").exists()


def test_init_with_skip_unpaired_writes_what_curate_accepts(tmp_path, capfd):
    argv = _init(tmp_path, {"a": _blob(), "b": np.zeros((64, 64), np.uint8)}) + ["--skip-unpaired"]
    code, out, err = run_cli(argv, capfd)
    assert code == 0, err
    assert "skipped: pair b: mask b.png is empty" in out
    report = curate(tmp_path / "mine.json", tmp_path / "store", progress=False)
    assert report.curated == ["mine/a"] and not report.failed


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_nonfinite_voxel_index_is_reported_the_same_in_every_format(tmp_path, suffix):
    from medsam_lib.data.readers import read_image

    with pytest.raises(MedSAMError) as err:
        read_image(_volume(tmp_path / f"v{suffix}", _nonfinite(np.inf)))
    assert "1 voxel(s) are NaN or infinite, e.g. at array index (1, 5, 7)" in str(err.value)


def test_a_good_dicom_series_still_reads(tmp_path):
    from medsam_lib.data.readers import read_image

    image = read_image(_dicom_series(tmp_path / "dcm"))
    assert image.array.shape == (5, 16, 16) and image.modality == "CT"
    np.testing.assert_allclose(image.spacing[0], 1.0)


def test_end_to_end_out_equal_to_image_in_a_subprocess(tmp_path):
    image = _png(tmp_path / "in.png")
    before = snapshot(tmp_path)
    code, out, err = run_cli(_seg(str(image), str(image)), use_subprocess=True, timeout=120)
    assert code == 2 and err.count("error:") == 1 and "in.png" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_success_writes_mask_and_prints_score(capsys, tmp_path):
    image = _png(tmp_path / "img.png")
    out = tmp_path / "m.png"
    assert main(["segment", "--image", str(image), "--box", "10,10,60,50", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("score=") and f"mask={out}" in line
    fields = dict(part.split("=", 1) for part in line.split())
    # the quality flag beside the score: likely-wrong exactly when the predicted IoU is under the IoU of DSC 0.7
    assert fields["quality"] == ("likely-wrong" if float(fields["score"]) < 0.7 / (2 - 0.7) else "ok")
    mask = np.array(Image.open(out))
    assert mask.shape == (64, 80) and set(np.unique(mask)) <= {0, 255}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "m.png"]


@pytest.mark.parametrize("score, quality", [(0.3, "likely-wrong"), (0.538, "likely-wrong"), (0.539, "ok"),
                                            (1.02, "ok")])
def test_segment_prints_the_quality_flag(capsys, tmp_path, monkeypatch, score, quality):
    """The decoder's own estimate decides the word: a predicted IoU under 0.7 / 1.3 (0.5385) is likely wrong."""
    from medsam_lib.models.predictor import BoxPredictor

    real = BoxPredictor.predict

    def with_score(self, boxes, points=None, labels=None):
        result = real(self, boxes, points, labels)
        result.scores[:] = score
        return result

    monkeypatch.setattr(BoxPredictor, "predict", with_score)
    image = _png(tmp_path / "img.png")
    assert main(["segment", "--image", str(image), "--box", "10,10,60,50", "--out", str(tmp_path / "m.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert f"score={score:.4f} quality={quality} pixels=" in line


def test_checkpoint_hash_mismatch(capfd, tmp_path, monkeypatch):
    from medsam_lib.models import zoo

    tampered = tmp_path / "lite_medsam.pth"
    data = bytearray(zoo.bundled_lite_checkpoint().read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "bundled_lite_checkpoint", lambda: tampered)
    row = BadInput("hash", lambda t, c: _seg(str(_png(t / "in.png")), str(t / "m.png")), ("checksum mismatch",),
                   model_allowed=True)
    work = tmp_path / "w"
    work.mkdir()
    check_bad_input(row, work, capfd)


def test_predict_before_set_image(lite_model):
    with pytest.raises(MedSAMError, match="set_image"):
        BoxPredictor(lite_model).predict([[0, 0, 5, 5]])


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA", "P"])
def test_2d_image_modes(tmp_path, lite_model, mode):
    base = _ramp()
    if mode == "I;16":
        img = Image.fromarray(base.astype(np.uint16) * 200)
    elif mode == "L":
        img = Image.fromarray(base)
    else:
        img = Image.fromarray(np.stack([base] * 3, -1)).convert(mode)
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    img.save(path)
    from medsam_lib.data.readers import read_image

    array = read_image(path).array
    predictor = BoxPredictor(lite_model)
    predictor.set_image(array)
    assert predictor.predict([[10, 10, 60, 50]]).masks.shape == (1, 64, 80)


def test_damaged_store_files_are_clear_errors(tmp_path):
    store = _good_store(tmp_path)
    with CuratedDataset(store) as ds:
        row = ds.index.iloc[0]
    (store / row["file"]).write_bytes(b"not a zip")
    with CuratedDataset(store) as ds, pytest.raises(MedSAMError, match=r"corrupt case file.*data curate again"):
        ds.load(row)
    (store / "curation.json").write_bytes(bytes(range(256)))
    with pytest.raises(MedSAMError, match=r"curation\.json: corrupt store description"):
        CuratedDataset(store)


def test_a_yaml_syntax_error_is_one_error_line(tmp_path, capfd):
    """yaml's parser messages span several lines; train's error stays one line (the rows check the first)."""
    (tmp_path / "bad.yaml").write_text("steps: [1, 2\n  - x: : y\n")
    code, _, err = run_cli(["train", "--config", str(tmp_path / "bad.yaml")], capfd)
    assert code == 2 and err.startswith("error:") and err.strip().count("\n") == 0, err
    assert "bad.yaml" in err and "line 2" in err
