"""The pixels a box-prompting session shows and embeds: its input read and checked, slices cached.

    image = read_input("scan.nii.gz")          # a path, a MedicalImage or a 2D array -> MedicalImage
    pixels = SlicePixels(image, modality="CT")  # checks the image (and windows a volume) at once
    rgb = pixels(12)                            # (H, W, 3) uint8 of slice 12 (None: a 2D image)
    base = pixels.shown(12, scale=5)            # the same enlarged 5 times: what the picture is painted on

Volume slices get their pixels from ``preprocess.slice_pixels`` (the window of the whole volume,
paper 3.1), as the CLI and curation do; 2D images are windowed as a whole (``to_uint8_rgb``). A bad
image fails when ``SlicePixels`` is made, before any model loads. A slice's pixels and its enlarged
picture are each kept for the last ``PIXEL_CACHE_SIZE`` slices asked for: scrolling through a long
volume holds a bounded memory. Needs no widget and no model.
"""
from __future__ import annotations

import numpy as np

from ..data.preprocess import intensity_window, slice_pixels
from ..data.readers import MedicalImage, read_image
from ..fileio import MedSAMError
from ..models.transforms import to_uint8_rgb
from .drawing import enlarge

PIXEL_CACHE_SIZE = 64  # slices whose uint8 pixels (and enlarged pictures) are kept


def read_input(image) -> MedicalImage:
    """A path the readers open, a ``MedicalImage`` (as is) or a 2D array (H, W) / (H, W, 1|3|4)."""
    if isinstance(image, MedicalImage):
        return image
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise MedSAMError(f"array image: expected (H, W) or (H, W, 3), got shape {image.shape}; "
                              "pass volumes as a file or a MedicalImage")
        return MedicalImage(array=image, path="array", spacing=(1.0, 1.0), is_volume=False)
    return read_image(image)


def check_pixels(image: MedicalImage, modality: str | None):
    """The intensity window of a whole volume (paper 3.1; None for 2D images, windowed as a whole)."""
    array = np.asarray(image.array)
    if not image.is_volume:
        to_uint8_rgb(array, modality, image.path)  # a bad 2D image fails here, before the model loads
        return None
    if array.ndim != 3:
        raise MedSAMError(f"{image.path}: expected a (Z, Y, X) volume, got shape {array.shape}")
    if min(array.shape[1:]) < 2:
        raise MedSAMError(f"{image.path}: slices of size {array.shape[1:]} are too small to segment")
    return intensity_window(array, modality, "paper", image.path)


def _kept(cache: dict, key, make):
    """``cache[key]``, made by ``make()`` when missing; the oldest entries go beyond ``PIXEL_CACHE_SIZE``."""
    if key not in cache:
        value = make()
        while len(cache) >= PIXEL_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = value
    return cache[key]


class SlicePixels:
    """``pixels(index)``: (H, W, 3) uint8, what is shown and embedded for a slice; ``pixels.shown(index,
    scale)`` the same enlarged for the picture (the last ``PIXEL_CACHE_SIZE`` of each kept); the image is
    checked when this is made (``check_pixels``)."""

    def __init__(self, image: MedicalImage, modality: str | None):
        self.image = image
        self.modality = modality
        self.window = check_pixels(image, modality)
        self._cache: dict[int | None, np.ndarray] = {}
        self._shown: dict[tuple, np.ndarray] = {}

    def __call__(self, index: int | None) -> np.ndarray:
        return _kept(self._cache, index, lambda: self._read(index))

    def shown(self, index: int | None, scale: int) -> np.ndarray:
        """(H * scale, W * scale, 3) uint8: the slice's pixels enlarged, what the picture is painted on."""
        return _kept(self._shown, (index, scale), lambda: enlarge(self(index), scale))

    def _read(self, index: int | None) -> np.ndarray:
        if self.image.is_volume:
            grey = slice_pixels(self.image.array, index or 0, self.modality, source=self.image.path,
                                window=self.window)
            return np.repeat(grey[..., None], 3, axis=2)
        return to_uint8_rgb(self.image.array, self.modality, self.image.path)
