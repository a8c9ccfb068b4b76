"""Preprocessing presets (paper 3.1-3.2), one function each; every number comes from ``paper.py``.

``paper`` (default, arXiv v1 3.1-3.2):
- CT clipped to [-500, 1000] HU; every other modality clipped at its 0.5 and 99.5 percentiles
  (over the whole volume or 2D image, all channels together); then scaled to [0, 255];
- images resized to 256 x 256 x 3 with antialiased bicubic interpolation (v1 used skimage's
  ``resize(order=3, anti_aliasing=True)``; we use Pillow's bicubic filter, which widens its support
  when shrinking, i.e. antialiases), masks with nearest neighbour;
- a 2D target is kept only if it covers >= 100 pixels at 256 x 256.

``official_code`` (the released MedSAM ``pre_CT_MR.py``):
- CT window level 40 / width 400, i.e. [-160, 240] HU;
- other modalities clipped at the 0.5/99.5 percentiles of voxels > 0, and voxels that were 0 stay 0;
- 3D objects under 1000 voxels removed (``cc3d.dust``, 26-connectivity) on the label map, then 2D
  objects under 100 pixels removed slice by slice (8-connectivity), both at native resolution;
  no 100-pixel rule at 256 x 256 (any target left with a pixel after resizing is kept).

Both presets share the resizing. A volume is windowed once (``intensity_window``) and then each slice
is scaled on its own (``apply_window``), so curation never holds a float copy of the whole volume.
``slice_pixels`` is the one rule for a volume's slice as uint8 pixels: curation (before resizing),
the CLI's ``segment`` and the box-prompting widget all take a slice's pixels from it.
This pair is the one place intensities are normalised: the window is found and applied in float64
(a float32 image spanning -3e38..3e38 overflows in float32 arithmetic: its brightest quarter came
out 0), and an image whose range overflows even float64 (e.g. +-1e308) is refused, never scaled to
black.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import paper
from ..fileio import MedSAMError

PRESETS = ("paper", "official_code")


@dataclass(frozen=True)
class Window:
    """Intensities ``low``..``high`` map linearly to 0..255 (clipped); ``keep_zero``: raw 0 stays 0."""

    low: float
    high: float
    keep_zero: bool = False


@dataclass(frozen=True)
class Preset:
    """What a preset does besides windowing (small-object rules). Constants: ``paper.py``."""

    name: str
    min_target_pixels: int  # a 2D target at CURATED_IMAGE_SIZE^2 needs at least this many pixels
    min_object_voxels_3d: int  # connected 3D objects (per label, native size) below this are removed; 0 = off
    min_object_pixels_2d: int  # connected 2D objects (per label and slice, native size) below this are removed


PRESET_SPECS = {
    "paper": Preset("paper", min_target_pixels=paper.MIN_TARGET_PIXELS, min_object_voxels_3d=0,
                    min_object_pixels_2d=0),
    "official_code": Preset("official_code", min_target_pixels=1,
                            min_object_voxels_3d=paper.OFFICIAL_CODE_MIN_OBJECT_VOXELS_3D,
                            min_object_pixels_2d=paper.OFFICIAL_CODE_MIN_OBJECT_PIXELS_2D),
}


def check_preset(preset: str) -> Preset:
    if preset not in PRESET_SPECS:
        raise MedSAMError(f"unknown preprocessing preset {preset!r}; choose one of {PRESETS}")
    return PRESET_SPECS[preset]


# The modalities the presets know (paper 3.1: CT gets the HU window, every other one the percentile
# rule). A qualifier after '-' is allowed (MR-T2, MR-FLAIR); DICOM Modality codes map to these names.
MODALITIES = ("CT", "MR", "PET", "Ultrasound", "X-Ray", "Endoscope", "Dermoscopy", "Retinal Image", "Fundus",
              "OCT", "Mammography", "Pathology")
DICOM_MODALITY_CODES = {"PT": "PET", "US": "Ultrasound", "CR": "X-Ray", "DX": "X-Ray", "XA": "X-Ray", "RF": "X-Ray",
                        "MG": "Mammography", "ES": "Endoscope", "OP": "Fundus", "SM": "Pathology", "OPT": "OCT",
                        "MRI": "MR", "XR": "X-Ray"}


def check_modality(modality: str, what: str = "--modality") -> str:
    """``modality`` if the presets know it (case-insensitive; 'MR-T2' style qualifiers and DICOM codes
    accepted); MedSAMError listing the known ones otherwise."""
    text = str(modality).strip()
    base, _, qualifier = text.partition("-") if not text.upper().startswith("X-RAY") else (text, "", "")
    known = {m.upper(): m for m in MODALITIES}
    name = known.get(text.upper()) or known.get(base.upper()) or DICOM_MODALITY_CODES.get(base.upper())
    if not text or name is None:
        raise MedSAMError(f"{what} {modality!r}: unknown modality; use one of {', '.join(MODALITIES)} "
                          "(a qualifier such as MR-T2 is fine)")
    return text if (known.get(text.upper()) or known.get(base.upper())) else name + (f"-{qualifier}" if qualifier else "")


def is_ct(modality: str | None) -> bool:
    return bool(modality) and modality.strip().upper().startswith("CT")


def ct_window(preset: str) -> tuple[float, float]:
    if preset == "paper":
        return paper.CT_WINDOW_HU
    level, width = paper.OFFICIAL_CODE_CT_WINDOW_LEVEL_WIDTH
    return level - width / 2, level + width / 2


def _check_numeric(array: np.ndarray, source: str) -> np.ndarray:
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise MedSAMError(f"{source}: pixel type {array.dtype} is not a real number type")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise MedSAMError(f"{source}: {bad} pixels are NaN or infinite; fix or mask them before segmenting")
    if array.size and np.issubdtype(array.dtype, np.floating):
        low, high = float(array.min()), float(array.max())
        if not np.isfinite(high - low):
            raise MedSAMError(f"{source}: intensities span {low:g} .. {high:g}, a range too wide to normalise "
                              "(it overflows float64); rescale the image")
    return array


def _percentile(array: np.ndarray, q) -> np.ndarray:
    """Percentiles interpolated in float64 (numpy interpolates in the array's own float type, and a
    float32 range near 3e38 overflows there)."""
    if np.issubdtype(array.dtype, np.floating) and array.dtype.itemsize < 8 and array.size:
        if float(array.max()) - float(array.min()) > float(np.finfo(array.dtype).max):
            array = array.astype(np.float64)
    return np.percentile(array, q).astype(np.float64)


def paper_window(array: np.ndarray, modality: str | None) -> Window:
    """Paper 3.1: CT [-500, 1000] HU; otherwise the 0.5 / 99.5 percentiles of all values."""
    if is_ct(modality):
        return Window(*ct_window("paper"))
    low, high = _percentile(array, paper.PERCENTILES)
    return Window(float(low), float(high))


def official_code_window(array: np.ndarray, modality: str | None) -> Window:
    """Released code: CT level 40 / width 400; otherwise percentiles of values > 0, zeros kept at 0."""
    if is_ct(modality):
        return Window(*ct_window("official_code"))
    foreground = array[array > 0]
    if foreground.size == 0:
        return Window(0.0, 0.0, keep_zero=True)
    low, high = _percentile(foreground, paper.PERCENTILES)
    return Window(float(low), float(high), keep_zero=True)


WINDOW_FUNCTIONS: dict[str, Callable[[np.ndarray, str | None], Window]] = {
    "paper": paper_window, "official_code": official_code_window}


def intensity_window(array: np.ndarray, modality: str | None = None, preset: str = "paper",
                     source: str = "image") -> Window:
    """The preset's clipping window for a whole image or volume (any shape, any real dtype)."""
    check_preset(preset)
    return WINDOW_FUNCTIONS[preset](_check_numeric(array, source), modality)


def apply_window(array: np.ndarray, window: Window) -> np.ndarray:
    """Clip to the window and scale to float32 in [0, 255], computed in float64 (module docstring);
    a degenerate window gives zeros."""
    lo, hi = paper.INTENSITY_RANGE
    if window.high <= window.low:
        return np.zeros(np.shape(array), dtype=np.float32)
    width = window.high - window.low
    if not np.isfinite(width):
        raise MedSAMError(f"intensity window {window.low:g} .. {window.high:g} is too wide to normalise "
                          "(it overflows float64); rescale the image")
    raw = np.asarray(array)
    out = np.clip(raw.astype(np.float64), window.low, window.high)
    out -= window.low
    out /= width  # in [0, 1] first: (hi - lo) / width overflows for a subnormal width (a ramp became black)
    out *= hi - lo
    out += lo
    if window.keep_zero:
        out[raw == 0] = 0.0
    return out.astype(np.float32)


def normalize_intensity(array: np.ndarray, modality: str | None = None, preset: str = "paper",
                        source: str = "image") -> np.ndarray:
    """Map raw intensities (any dtype, any range) to float32 in [0, 255] as the preset says.

    ``source`` names the file or case in error messages.
    """
    return apply_window(array, intensity_window(array, modality, preset, source))


def slice_pixels(volume: np.ndarray, index: int, modality: str | None = None, preset: str = "paper",
                 source: str = "volume", window: Window | None = None) -> np.ndarray:
    """The pixels of slice ``index`` of a (Z, H, W[, C]) volume, as uint8: the ONE intensity rule for a
    volume's slice, shared by prompting (the CLI's ``segment``, the widget) and curation.

    The preset's window is found over the WHOLE volume (``intensity_window``: paper 3.1 windows 3D
    images as a whole), applied to the slice and rounded. Pass ``window`` (that of the same volume) to
    reuse it for many slices. A 2D image is a volume of one slice.
    """
    volume = np.asarray(volume)
    if volume.ndim < 3:
        raise MedSAMError(f"{source}: expected a (Z, H, W) volume, got shape {volume.shape}")
    n = volume.shape[0]
    if not 0 <= int(index) < n:
        raise MedSAMError(f"{source}: slice {index} out of range (the volume has {n} slices, 0..{n - 1})")
    if window is None:
        window = intensity_window(volume, modality, preset, source)
    return np.round(apply_window(volume[int(index)], window)).astype(np.uint8)


def resize_image(image: np.ndarray, size: int = paper.CURATED_IMAGE_SIZE) -> np.ndarray:
    """(H, W) or (H, W, C) float in [0, 255] -> (size, size) or (size, size, C) uint8.

    Antialiased bicubic (Pillow) per channel, clipped and rounded (paper 3.1: 256 x 256).
    """
    from PIL import Image

    image = np.asarray(image, dtype=np.float32)
    planes = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[2])]
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize((size, size), Image.BICUBIC))
           for p in planes]
    stacked = out[0] if image.ndim == 2 else np.stack(out, axis=-1)
    return np.round(np.clip(stacked, 0.0, 255.0)).astype(np.uint8)


def resize_mask(mask: np.ndarray, size: int = paper.CURATED_IMAGE_SIZE) -> np.ndarray:
    """(H, W) bool/label -> (size, size) of the same dtype, nearest neighbour (pixel-centre aligned)."""
    import cv2

    mask = np.asarray(mask)
    dtype = mask.dtype
    work = mask.astype(np.uint8) if dtype == bool else mask
    if work.dtype not in (np.uint8, np.uint16, np.int16, np.float32):
        work = work.astype(np.int32).astype(np.float32)
    out = cv2.resize(work, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    return out.astype(dtype)


def remove_small_objects(labels: np.ndarray, preset: str) -> np.ndarray:
    """The preset's small-object rule on a label map (Z, Y, X) at native size (a copy when it changes).

    ``paper``: unchanged. ``official_code``: ``cc3d.dust`` on 3D objects (26-connected, per label)
    under 1000 voxels, then on each slice's 2D objects (8-connected) under 100 pixels.
    """
    spec = check_preset(preset)
    if not spec.min_object_voxels_3d and not spec.min_object_pixels_2d:
        return labels
    import cc3d

    out = np.ascontiguousarray(labels).copy()
    if spec.min_object_voxels_3d and out.shape[0] > 1:
        out = cc3d.dust(out, threshold=spec.min_object_voxels_3d, connectivity=26, in_place=True)
    if spec.min_object_pixels_2d:
        for z in range(out.shape[0]):
            if out[z].any():
                out[z] = cc3d.dust(np.ascontiguousarray(out[z]), threshold=spec.min_object_pixels_2d,
                                   connectivity=8, in_place=False)
    return out
