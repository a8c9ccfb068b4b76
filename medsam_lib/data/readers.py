"""Reading and writing images and masks, keeping voxel geometry.

Axis order (documented once, used everywhere):
- 2D images: ``array`` is (H, W) or (H, W, C) as Pillow gives it; spacing (row, col) = (1, 1)
  unless the format says otherwise.
- 3D volumes: ``array`` is (Z, Y, X), SimpleITK's ``GetArrayFromImage`` order; ``spacing`` is given
  in the same (Z, Y, X) order, in mm. ``origin`` and ``direction`` keep SimpleITK's (x, y, z)
  conventions so a mask written back lines up with the source in any viewer.
Slices of a volume are taken along the array's first axis (the out-of-plane axis, paper 3.2).

Non-finite values, one rule for every format: an image or mask holding NaN or +-inf voxels is
refused when it is read (MedSAMError naming the file and how many voxels), whatever the format
(NIfTI, NRRD, MetaImage, TIFF float, ...). Nothing guesses a value for them: SimpleITK's NIfTI
reader silently turns them into 0, so NIfTI voxel data is checked on the raw bytes as well.
(Integer DICOM cannot hold them.) Inputs must be regular files or folders: a named pipe, device
or socket is refused before anything opens it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import MedSAMError, atomic_path, check_input_path
from .integrity import (check_claimed_size, check_file, check_finite, nifti_data_check, open_2d, quiet_itk,
                        single_frame)
from .nifti import check_nifti_header

IMAGE_2D_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp"}
VOLUME_SUFFIXES = {".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"}


def file_kind(path: str | os.PathLike) -> str:
    """'dicom' for a folder, '2d' or 'volume' by suffix; raises MedSAMError for anything else."""
    path = Path(path)
    if os.path.exists(path):
        check_input_path(path, "image")  # a pipe, device or socket is refused before anyone opens it
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return "volume"
    suffix = path.suffix.lower()
    if suffix in IMAGE_2D_SUFFIXES:
        return "2d"
    if suffix in VOLUME_SUFFIXES or suffix == ".dcm":
        return "volume"
    raise MedSAMError(f"{path}: unsupported file type {suffix or '(no suffix)'}; expected one of "
                      f"{sorted(IMAGE_2D_SUFFIXES | VOLUME_SUFFIXES)} or a DICOM folder")


@dataclass
class MedicalImage:
    """An image or volume with its geometry. See the module docstring for the axis order."""

    array: np.ndarray
    path: str
    spacing: tuple[float, ...]
    is_volume: bool
    origin: tuple[float, ...] = ()
    direction: tuple[float, ...] = ()
    modality: str | None = None  # from DICOM's Modality tag when known
    meta: dict = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return int(self.array.shape[0]) if self.is_volume else 1

    def slice(self, index: int) -> np.ndarray:
        """One 2D slice (Y, X) of a volume along its out-of-plane axis."""
        if not self.is_volume:
            raise MedSAMError(f"{self.path} is a 2D image; --slice applies to volumes only")
        if not 0 <= index < self.n_slices:
            raise MedSAMError(f"{self.path}: slice {index} out of range (the volume has {self.n_slices} "
                              f"slices, 0..{self.n_slices - 1})")
        return self.array[index]


def read_2d(path: str | os.PathLike) -> MedicalImage:
    """PNG, JPEG, TIFF, GIF, BMP; 8 or 16 bit; grey, RGB, RGBA or palette (palette -> RGB); one frame."""
    from PIL import Image

    path = Path(path)
    check_file(path)
    try:
        with open_2d(path, "image") as img:
            single_frame(img, path)
            img.load()
            mode = img.mode
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif mode in ("1", "LA"):
                img = img.convert("L")
            elif mode == "CMYK" or mode == "YCbCr":
                img = img.convert("RGB")
            array = np.array(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MedSAMError(f"{path}: truncated or corrupt image ({exc})") from exc
    check_finite(array, path)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]  # alpha carries no intensity
    if array.ndim == 3 and array.shape[2] == 2:
        array = array[..., 0]
    return MedicalImage(array=array, path=str(path), spacing=(1.0, 1.0), is_volume=False,
                        meta={"mode": mode})


def read_volume(path: str | os.PathLike, channel: int | None = None) -> MedicalImage:
    """NIfTI, NRRD, MetaImage, or a DICOM series folder, via SimpleITK.

    A 4D or multi-component file (e.g. the Medical Segmentation Decathlon's multi-sequence MR) is an
    error unless ``channel`` picks one 3D volume out of it (index along the 4th axis / component).
    NaN / +-inf voxels are refused (module docstring); a DICOM series is checked for unreadable
    slices and uneven spacing.
    """
    import SimpleITK as sitk

    path = Path(path)
    check_file(path)
    modality = None
    try:
        with quiet_itk():
            if path.is_dir():
                from .dicom import read_dicom_series

                image, modality = read_dicom_series(path)
            else:
                if path.name.lower().endswith((".nii", ".nii.gz")):
                    check_nifti_header(path)  # compression, NIfTI-2, shear, qform vs sform: named, not "corrupt"
                check_claimed_size(path)
                image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        raise MedSAMError(f"{path}: truncated or corrupt volume, SimpleITK cannot read it ({first.strip()})") from exc
    if channel is not None:
        image = _select_channel(image, channel, path)
    if image.GetDimension() == 4 or (image.GetDimension() == 3 and image.GetNumberOfComponentsPerPixel() > 1):
        raise MedSAMError(f"{path}: 4D or multi-component volume (size {image.GetSize()}, "
                          f"{image.GetNumberOfComponentsPerPixel()} component(s)); give one 3D volume, "
                          "or name the channel to use (manifest 'channel')")
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        nifti_data_check(path)
    array = sitk.GetArrayFromImage(image)
    check_finite(array, path)
    spacing_xyz = image.GetSpacing()
    return MedicalImage(array=array, path=str(path), spacing=tuple(float(s) for s in spacing_xyz[::-1]),
                        is_volume=True, origin=tuple(image.GetOrigin()), direction=tuple(image.GetDirection()),
                        modality=modality)


def _select_channel(image, channel: int, path: Path):
    """One 3D volume out of a 4D image (4th axis) or a multi-component 3D image."""
    import SimpleITK as sitk

    if image.GetDimension() == 4:
        n = image.GetSize()[3]
        if not 0 <= channel < n:
            raise MedSAMError(f"{path}: channel {channel} out of range (the 4D volume has {n}: 0..{n - 1})")
        size = list(image.GetSize())
        size[3] = 0
        return sitk.Extract(image, size=size, index=[0, 0, 0, channel])
    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        if channel == 0:
            return image
        raise MedSAMError(f"{path}: channel {channel} asked for, but the volume has a single channel")
    if not 0 <= channel < n:
        raise MedSAMError(f"{path}: channel {channel} out of range (the volume has {n} components: 0..{n - 1})")
    return sitk.VectorIndexSelectionCast(image, channel)


MASK_ENCODINGS = ("label", "binary", "rgb")
MAX_MASK_SCALE = 16  # the manifest schema's bound on a mask's ``scale``
LOSSY_SUFFIXES = {".jpg", ".jpeg"}
# What write_mask writes: lossless formats only, each one file (no detached header + data pair).
MASK_OUTPUT_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".nii.gz", ".nii", ".nrrd", ".mha")
_LOSSY_OUTPUT = (".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".jp2", ".j2k", ".jpx", ".heic", ".avif")


def check_mask_output(path: str | os.PathLike) -> Path:
    """``path`` if ``write_mask`` can write a lossless mask there (by its suffix); MedSAMError otherwise."""
    path = Path(path)
    name = path.name.lower()
    if any(name.endswith(s) for s in MASK_OUTPUT_SUFFIXES):
        return path
    if name.endswith(_LOSSY_OUTPUT):
        raise MedSAMError(f"{path}: {path.suffix} is a lossy format: it would blur the mask into many grey values; "
                          f"use one of {', '.join(MASK_OUTPUT_SUFFIXES)}")
    if name.endswith((".mhd", ".nhdr", ".hdr")):
        raise MedSAMError(f"{path}: {path.suffix} keeps the voxels in a second file; use .mha, .nrrd or .nii.gz")
    raise MedSAMError(f"{path}: unsupported mask format {path.suffix or '(no suffix)'}; use one of "
                      f"{', '.join(MASK_OUTPUT_SUFFIXES)}")


def read_mask(path: str | os.PathLike, encoding: str = "label", threshold: float | None = None,
              palette: dict[int, tuple[int, int, int]] | None = None, scale: int = 1) -> MedicalImage:
    """A segmentation as an integer label map, with the geometry of its file.

    ``encoding``:
    - ``label``: stored values are the labels (NIfTI/NRRD/DICOM label maps, grey or palette PNG/TIFF;
      a palette PNG keeps its indices). RGB files whose channels are all equal count as grey.
      JPEG is refused: lossy compression invents values along every edge.
    - ``binary``: foreground where any channel exceeds ``threshold`` -> label 1 (default threshold:
      127 for 2D files, e.g. JPEG masks of 0/255; 0 for volumes).
    - ``rgb``: colour-coded labels; each channel is binarised at ``threshold`` (default 127) and the
      resulting colour looked up in ``palette`` {label: (r, g, b)}; other colours become 0.
    ``scale``: a 2D mask stored at 1/scale of its image's rows and columns (SCR's 1024 x 1024 masks of
    2048 x 2048 JSRT radiographs: 2) is upsampled after decoding, each pixel repeated scale x scale
    times (nearest neighbour), so it lies on its image's grid; volumes are refused.
    Array axes as in ``read_image``; the result is uint8/uint16/int32 (smallest that fits).
    """
    path = Path(path)
    if encoding not in MASK_ENCODINGS:
        raise MedSAMError(f"{path}: unknown mask encoding {encoding!r}; use one of {MASK_ENCODINGS}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or not 1 <= scale <= MAX_MASK_SCALE:
        raise MedSAMError(f"{path}: mask scale must be a whole number from 1 to {MAX_MASK_SCALE}, got {scale!r}")
    kind = file_kind(path)
    if scale != 1 and kind != "2d":
        raise MedSAMError(f"{path}: mask scale {scale} applies to 2D masks only; resample a volume's mask onto "
                          "its image's grid instead")
    if kind == "2d":
        from PIL import Image

        check_file(path)
        try:
            with open_2d(path, "mask image") as img:
                single_frame(img, path)
                img.load()
                mode = img.mode
                if mode == "P" and encoding == "label":
                    array = np.array(img)  # palette indices are the labels
                elif mode in ("1", "L", "I", "I;16", "I;16B", "F"):
                    array = np.array(img)
                else:
                    array = np.array(img.convert("RGB"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise MedSAMError(f"{path}: truncated or corrupt mask image ({exc})") from exc
        check_finite(array, path)
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        image = MedicalImage(array=array, path=str(path), spacing=(1.0, 1.0), is_volume=False, meta={"mode": mode})
        default_threshold = 127.0
    else:
        image = read_volume(path)
        array = image.array
        default_threshold = 0.0
    threshold = default_threshold if threshold is None else float(threshold)
    if encoding == "label":
        if path.suffix.lower() in LOSSY_SUFFIXES:
            raise MedSAMError(f"{path}: a JPEG mask cannot hold exact label values (lossy compression); "
                              "use encoding 'binary' (thresholded) or 'rgb' with a palette")
        if array.ndim == 3 and not image.is_volume:
            if (array == array[..., :1]).all():
                array = array[..., 0]
            else:
                raise MedSAMError(f"{path}: colour mask with encoding 'label'; use encoding 'rgb' with a palette "
                                  "(label -> [r, g, b]) or 'binary'")
        if array.size and array.min() < 0:
            raise MedSAMError(f"{path}: label map holds negative values (min {array.min()})")
        if np.issubdtype(array.dtype, np.floating):  # e.g. BraTS stores labels as float32
            for plane in (array if array.ndim == 3 else [array]):  # slice by slice: no full-size copy
                bad = plane != np.rint(plane)
                if bad.any():
                    raise MedSAMError(f"{path}: label map holds non-integer values (e.g. {plane[bad][0]}); "
                                      "is this an image rather than a mask?")
            top = float(array.max()) if array.size else 0.0
            array = array.astype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32)
        labels = array
    elif encoding == "binary":
        fg = array > threshold
        labels = fg.any(axis=-1) if (fg.ndim == 3 and not image.is_volume) else fg
    else:
        if not palette:
            raise MedSAMError(f"{path}: encoding 'rgb' needs a palette (label -> [r, g, b])")
        if array.ndim != 3 or image.is_volume or array.shape[2] < 3:
            raise MedSAMError(f"{path}: encoding 'rgb' needs a colour image, got shape {array.shape}")
        bits = array[..., :3] > threshold
        code = bits[..., 0].astype(np.uint8) * 4 + bits[..., 1] * 2 + bits[..., 2]
        labels = np.zeros(code.shape, dtype=np.int32)
        for label, rgb in palette.items():
            want = (int(rgb[0] > threshold) * 4 + int(rgb[1] > threshold) * 2 + int(rgb[2] > threshold))
            if want == 0:
                raise MedSAMError(f"{path}: palette colour {list(rgb)} for label {label} is background after "
                                  f"thresholding at {threshold:g}")
            labels[code == want] = int(label)
    labels = np.asarray(labels)
    if scale != 1:
        labels = labels.repeat(scale, axis=0).repeat(scale, axis=1)
    image.array = compact_labels(labels)
    return image


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """A non-negative label array in the smallest of uint8 / uint16 / int32 that holds its values."""
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32
    return labels.astype(dtype, copy=False)


def read_image(path: str | os.PathLike, channel: int | None = None) -> MedicalImage:
    """Read any supported 2D image or 3D volume (see ``file_kind``); ``channel`` as in ``read_volume``."""
    kind = file_kind(path)
    if kind == "2d":
        if channel is not None:
            raise MedSAMError(f"{path}: a channel applies to 4D / multi-component volumes, not to 2D images")
        return read_2d(path)
    return read_volume(path, channel=channel)


def write_mask(mask: np.ndarray, path: str | os.PathLike, reference: MedicalImage | None = None,
               slice_index: int | None = None) -> Path:
    """Write a binary mask atomically.

    PNG/TIFF/...: 8-bit, 0 background and 255 foreground. NIfTI/NRRD: uint8 0/1 with the geometry of
    ``reference``; for a mask of one slice, the full volume is written with that slice filled in.
    The output folder must exist; nothing is left behind on error.
    """
    path = check_mask_output(path)
    mask = np.asarray(mask).astype(bool)
    suffix = "".join(path.suffixes).lower()
    if any(suffix.endswith(s) for s in VOLUME_SUFFIXES):
        import SimpleITK as sitk

        if reference is not None and reference.is_volume:
            volume = np.zeros(reference.array.shape[:3], dtype=np.uint8)
            if slice_index is not None:
                if mask.shape != volume.shape[1:]:
                    raise MedSAMError(f"mask shape {mask.shape} does not match slice shape {volume.shape[1:]}")
                volume[slice_index] = mask
            else:
                volume[...] = mask
        else:
            volume = mask.astype(np.uint8)[None] if mask.ndim == 2 else mask.astype(np.uint8)
        image = sitk.GetImageFromArray(volume.astype(np.uint8))
        if reference is not None and reference.is_volume:
            image.SetSpacing(tuple(reference.spacing[::-1]))
            image.SetOrigin(reference.origin)
            image.SetDirection(reference.direction)
        return write_itk(image, path, compress=suffix.endswith(".gz"))
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray((mask * 255).astype(np.uint8)).save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
    return path


def write_itk(image, path: str | os.PathLike, compress: bool = False) -> Path:
    """The one place a SimpleITK image is written (masks here, phantom volumes in ``phantoms``):
    atomically, and verified before the rename. SimpleITK does not report a failed write (a full
    disk or a file size limit leaves a truncated file and no error), so the temporary file is read
    back: a gzip stream must be complete, the voxel bytes must end the (decompressed) file, and
    SimpleITK must read back the same array. Otherwise MedSAMError "cannot write <path>: ...
    nothing was written", and no file is left."""
    import gzip
    import zlib

    import SimpleITK as sitk

    path = Path(path)
    expected = sitk.GetArrayViewFromImage(image)
    with atomic_path(path) as tmp:
        try:
            with quiet_itk():
                sitk.WriteImage(image, str(tmp), useCompression=compress)  # some formats do report
            data = tmp.read_bytes()
            if compress:
                data = gzip.decompress(data)
            if not data.endswith(np.ascontiguousarray(expected).tobytes()):
                raise ValueError("the voxel data are incomplete")
            with quiet_itk():
                back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp)))
            if back.shape != expected.shape or not np.array_equal(back, expected):
                raise ValueError("the voxels read back differ from those written")
        except (OSError, EOFError, ValueError, RuntimeError, zlib.error, gzip.BadGzipFile) as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise MedSAMError(f"cannot write {path}: the file did not read back intact ({reason}); the disk may be "
                              "full or a file size limit reached; nothing was written (free space or choose another "
                              "output folder)") from None
    return path
