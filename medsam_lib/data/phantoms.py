"""A small deterministic SYNTHETIC data set for the offline demo (no real patient data).

Four data sets of phantoms, each built to show one way box prompting struggles on medical images,
with five cases each (the original phantom and four seeded variations of it: moved, scaled, turned)
so the seeded 80/20 split by case leaves train, validation and test cases:
- ``synthetic_ct_abdomen``: CT-like volume in HU: a liver with a low-contrast, small tumour (tiny
  target, low contrast; the paper's Fig. 5 liver-tumour failure) and a kidney-like organ.
- ``synthetic_mr_heart``: MR-like volume: a left-ventricle cavity inside a myocardium ring whose
  boundary fades on one side (missing boundary; Fig. 5's left ventricle).
- ``synthetic_us_breast``: ultrasound-like 2D image with multiplicative speckle and a hypoechoic
  lesion with weak, irregular edges.
- ``synthetic_xray_chest``: 16-bit X-ray-like 2D image with two lung fields of graded contrast.
Every case id starts with ``synthetic_`` so nothing downstream can mistake it for real data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import atomic_path, atomic_write_text
from .readers import write_itk

GENERATOR_VERSION = 2  # 2: five cases per data set (variants 1-4 added)


def _ellipse(shape, center, radii, angle=0.0):
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    cy, cx = center
    c, s = np.cos(angle), np.sin(angle)
    y, x = yy - cy, xx - cx
    u, v = c * x + s * y, -s * x + c * y
    return (u / radii[1]) ** 2 + (v / radii[0]) ** 2 <= 1.0


def _smooth_noise(rng, shape, sigma):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)


def ct_abdomen(rng, n_slices=12, size=128, v=None):
    v = v or {}
    dy, dx = v.get("shift", (0.0, 0.0))
    scale, angle = v.get("scale", 1.0), 0.3 + v.get("angle", 0.0)
    ty, tx = v.get("tumour_shift", (0.0, 0.0))
    tumour_radius = v.get("tumour_radius", 5.0)
    img = np.full((n_slices, size, size), -1000.0, dtype=np.float32)  # air
    lab = np.zeros((n_slices, size, size), dtype=np.uint8)
    for z in range(n_slices):
        t = z / max(n_slices - 1, 1)
        body = _ellipse((size, size), (64, 64), (50, 60))
        img[z][body] = -100.0  # subcutaneous fat
        inner_body = _ellipse((size, size), (64, 64), (45, 55))
        img[z][inner_body] = 40.0  # muscle / soft tissue
        liver = _ellipse((size, size), (58 + dy, 48 + dx), ((26 - 6 * abs(t - 0.5)) * scale, 30 * scale), angle=angle)
        img[z][liver] = 110.0  # contrast-enhanced liver
        lab[z][liver] = 1
        kidney = _ellipse((size, size), (72 + dy / 2, 92 - dx / 2), (10 * scale, 7 * scale))
        img[z][kidney] = 180.0
        lab[z][kidney] = 3
        r = tumour_radius * np.sqrt(max(0.0, 1 - ((t - 0.5) / 0.35) ** 2))
        if r >= 2.0:
            tumour = _ellipse((size, size), (56 + dy + ty, 44 + dx + tx), (r, r)) & liver
            img[z][tumour] = 85.0  # 25 HU below the liver: low contrast
            lab[z][tumour] = 2
        spine = _ellipse((size, size), (100, 64), (7, 7))
        img[z][spine] = 700.0
    img += 12.0 * rng.standard_normal(img.shape).astype(np.float32)
    return np.round(img).astype(np.int16), lab


def mr_heart(rng, n_slices=10, size=128, v=None):
    v = v or {}
    cy, cx = 64 + v.get("shift", (0.0, 0.0))[0], 64 + v.get("shift", (0.0, 0.0))[1]
    scale = v.get("scale", 1.0)
    img = np.zeros((n_slices, size, size), dtype=np.float32)
    lab = np.zeros((n_slices, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for z in range(n_slices):
        t = z / max(n_slices - 1, 1)
        img[z] = 120.0
        outer = _ellipse((size, size), (cy, cx), ((30 - 8 * t) * scale, (30 - 8 * t) * scale))
        inner = _ellipse((size, size), (cy, cx), ((20 - 7 * t) * scale, (20 - 7 * t) * scale))
        myo = outer & ~inner
        fade = np.clip((xx - cx) / 30.0, 0, 1)  # the wall fades out towards the right: missing boundary
        img[z][myo] = (60.0 + 300.0 * fade)[myo]
        img[z][inner] = 360.0
        lab[z][inner] = 1
        lab[z][myo] = 2
    img *= 1.0 + 0.15 * _smooth_noise(rng, img.shape, 3.0)  # coil-like inhomogeneity
    img += 10.0 * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(img, 0, None).astype(np.uint16), lab


def us_breast(rng, size=256, v=None):
    v = v or {}
    cy, cx = 128 + v.get("shift", (0.0, 0.0))[0], 120 + v.get("shift", (0.0, 0.0))[1]
    base_radius, phase = v.get("radius", 38.0), v.get("phase", 1.0)
    base = 140.0 + 30.0 * _smooth_noise(rng, (size, size), 12.0)
    angle = np.linspace(0, 2 * np.pi, 400)
    radius = base_radius + 6 * np.sin(5 * angle + phase) + 3 * np.sin(11 * angle)
    yy, xx = np.mgrid[:size, :size]
    theta = np.arctan2(yy - cy, xx - cx) % (2 * np.pi)
    r_at = np.interp(theta, angle, radius)
    lesion = np.hypot(yy - cy, xx - cx) <= r_at
    from scipy.ndimage import gaussian_filter

    soft = gaussian_filter(lesion.astype(np.float32), 4.0)  # weak, blurred edge
    img = base * (1 - 0.6 * soft)
    speckle = rng.rayleigh(1.0, (size, size)).astype(np.float32) / np.sqrt(np.pi / 2)
    img = np.clip(img * speckle, 0, 255)
    return img.astype(np.uint8), lesion.astype(np.uint8)


def xray_chest(rng, size=256, v=None):
    v = v or {}
    dy, dx = v.get("shift", (0.0, 0.0))
    scale = v.get("scale", 1.0)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    img = 30000.0 + 8000.0 * np.exp(-((xx - 128 - dx) / 40) ** 2)  # mediastinum
    left = _ellipse((size, size), (120 + dy, 78 + dx), (80 * scale, 40 * scale), angle=-0.1)
    right = _ellipse((size, size), (120 + dy, 178 + dx), (80 * scale, 42 * scale), angle=0.1)
    lungs = left | right
    gradient = 1.0 - 0.25 * (yy / size)
    img[lungs] = (14000.0 * gradient)[lungs]
    img += 1500.0 * _smooth_noise(rng, (size, size), 6.0) + 400.0 * rng.standard_normal((size, size))
    lab = np.zeros((size, size), dtype=np.uint8)
    lab[left] = 1
    lab[right] = 2
    return np.clip(img, 0, 65535).astype(np.uint16), lab


# One phantom per data set is the original (variant 0, kept exactly as before: the examples, the
# widget and the teardown use it); variants 1.. move, scale and turn its anatomy (drawn from the
# seed) so each data set has CASES_PER_DATASET cases for the 80/20 split and a validation split.
# Variant volumes are thinner (fewer slices) to keep the demo's curation and embeddings cheap.
CASES_PER_DATASET = 5
_DATASETS = (
    ("synthetic_ct_abdomen", "CT", "nii.gz", {1: "liver", 2: "liver tumour", 3: "kidney"}, (3.0, 0.8, 0.8)),
    ("synthetic_mr_heart", "MR", "nii.gz", {1: "left ventricle", 2: "myocardium"}, (8.0, 1.25, 1.25)),
    ("synthetic_us_breast", "Ultrasound", "png", {1: "breast tumour"}, (1.0, 1.0)),
    ("synthetic_xray_chest", "X-Ray", "png", {1: "left lung", 2: "right lung"}, (1.0, 1.0)),
)
_VARIANT_SLICES = {"synthetic_ct_abdomen": 6, "synthetic_mr_heart": 5}


@dataclass(frozen=True)
class PhantomCase:
    case_id: str
    modality: str
    image: str  # file name inside the set folder
    mask: str
    labels: dict  # label value -> target name
    spacing: tuple  # (Z, Y, X) for volumes, (row, col) for 2D, in mm
    dataset: str = ""  # the data set (manifest entry) the case belongs to
    variant: int = 0  # 0: the original phantom; 1..: a seeded variation of it


def _cases() -> tuple[PhantomCase, ...]:
    cases = []
    for name, modality, ext, labels, spacing in _DATASETS:
        for k in range(CASES_PER_DATASET):
            case_id = name if k == 0 else f"{name}_{k:02d}"
            cases.append(PhantomCase(case_id, modality, f"{case_id}.{ext}", f"{case_id}_mask.{ext}", labels, spacing,
                                     name, k))
    return tuple(cases)


CASES = _cases()
_BUILDERS = {"synthetic_ct_abdomen": ct_abdomen, "synthetic_mr_heart": mr_heart,
             "synthetic_us_breast": us_breast, "synthetic_xray_chest": xray_chest}


def _variant_params(dataset: str, rng) -> dict:
    shift = tuple(float(x) for x in rng.uniform(-1, 1, 2))
    if dataset == "synthetic_ct_abdomen":
        return {"shift": (6 * shift[0], 6 * shift[1]), "scale": float(rng.uniform(0.85, 1.1)),
                "angle": float(rng.uniform(-0.2, 0.2)), "tumour_shift": tuple(float(x) for x in rng.uniform(-3, 3, 2)),
                "tumour_radius": float(rng.uniform(4.5, 6.0))}
    if dataset == "synthetic_mr_heart":
        return {"shift": (8 * shift[0], 8 * shift[1]), "scale": float(rng.uniform(0.85, 1.15))}
    if dataset == "synthetic_us_breast":
        return {"shift": (20 * shift[0], 20 * shift[1]), "radius": float(rng.uniform(30, 44)),
                "phase": float(rng.uniform(0, 2 * np.pi))}
    return {"shift": (8 * shift[0], 8 * shift[1]), "scale": float(rng.uniform(0.9, 1.05))}


def make_case(case: PhantomCase, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image, label map) of one phantom; the same seed always gives the same arrays."""
    index = [d[0] for d in _DATASETS].index(case.dataset)
    builder = _BUILDERS[case.dataset]
    if case.variant == 0:
        return builder(np.random.default_rng([seed, index]))
    rng = np.random.default_rng([seed, index, case.variant])
    params = _variant_params(case.dataset, rng)
    if case.dataset in _VARIANT_SLICES:
        return builder(rng, n_slices=_VARIANT_SLICES[case.dataset], v=params)
    return builder(rng, v=params)


def _write(array: np.ndarray, path: Path, spacing: tuple, is_label: bool) -> None:
    if array.ndim == 3:
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        write_itk(image, path, compress=True)
    else:
        from PIL import Image

        with atomic_path(path) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")


def write_synthetic_set(out_dir: str | Path, seed: int = 0) -> Path:
    """Write every phantom (image + label map) and an ``index.json`` under ``out_dir``; idempotent.

    A set already written with the same seed and generator version is left as it is.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    if index_path.is_file():
        info = json.loads(index_path.read_text(encoding="utf-8"))
        if info.get("seed") == seed and info.get("generator_version") == GENERATOR_VERSION and all(
                (out / c.image).is_file() and (out / c.mask).is_file() for c in CASES):
            return out
    entries = []
    for case in CASES:
        image, labels = make_case(case, seed)
        _write(image, out / case.image, case.spacing, is_label=False)
        _write(labels, out / case.mask, case.spacing, is_label=True)
        entries.append({"case_id": case.case_id, "dataset": case.dataset, "modality": case.modality, "image": case.image,
                        "mask": case.mask, "labels": {str(k): v for k, v in case.labels.items()},
                        "spacing": list(case.spacing), "synthetic": True})
    atomic_write_text(index_path, json.dumps({"synthetic": True, "seed": seed,
                                              "generator_version": GENERATOR_VERSION,
                                              "cases": entries}, indent=2))
    return out
