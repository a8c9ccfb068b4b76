"""What a file must pass before its voxels are trusted (used by ``readers``).

- it is a regular file or a folder (a named pipe, device or socket is refused before it is opened);
- it is not empty, and a volume's header does not claim more voxel bytes than the file can hold;
- a 2D file holds one frame (a multi-page TIFF / animated GIF is a stack, not an image);
- the one non-finite rule: NaN or +-inf voxels are refused, in every format. SimpleITK's NIfTI
  reader turns them into 0 (and reads a truncated file with zeros), so NIfTI voxel bytes are
  streamed and checked as well.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..fileio import MedSAMError, check_input_path


def check_file(path: Path) -> None:
    check_input_path(path, "image")
    if path.is_file() and path.stat().st_size == 0:
        raise MedSAMError(f"{path}: the file is empty (0 bytes)")


def nonfinite_error(path, count: int, where: tuple | None = None) -> MedSAMError:
    at = f", e.g. at array index {tuple(int(i) for i in where)}" if where is not None else ""
    return MedSAMError(f"{path}: {count} voxel(s) are NaN or infinite{at}; no value is guessed for them: replace "
                       "them (e.g. with the background value) and try again")


def check_finite(array: np.ndarray, path) -> None:
    """The one non-finite rule (module docstring): refuse NaN / +-inf, checked plane by plane."""
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.complexfloating):
        return
    planes = array if array.ndim >= 3 else [array]
    count, where = 0, None
    for z, plane in enumerate(planes):
        bad = ~np.isfinite(plane)
        n = int(bad.sum())
        if n:
            if where is None:
                first = np.unravel_index(int(np.flatnonzero(bad)[0]), plane.shape)
                where = ((z,) + tuple(first)) if array.ndim >= 3 else tuple(first)
            count += n
    if count:
        raise nonfinite_error(path, count, where)


def open_2d(path: Path, what: str):
    """Pillow's Image.open, with every failure as a MedSAMError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise MedSAMError(f"{path}: the header claims a huge image ({exc}); refusing to decode it "
                          "(a corrupt or hostile file?)") from exc
    except UnidentifiedImageError as exc:
        raise MedSAMError(f"{path}: not a readable {what} (Pillow cannot identify it)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise MedSAMError(f"{path}: truncated or corrupt {what} ({exc})") from exc


def single_frame(img, path: Path) -> None:
    """A multi-page TIFF or an animated GIF is a stack, not one image: refuse it rather than use page 0."""
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1:
        raise MedSAMError(f"{path}: holds {frames} frames/pages, not one image; give a single-frame file, or "
                          "save the stack as a volume (.nii.gz / .nrrd) to segment one slice")


def nifti_data_check(path: Path) -> None:
    """Guard against two silent SimpleITK NIfTI behaviours (seen with SimpleITK 2.5): a truncated
    file is read with the missing voxels set to 0, and NaN / +-inf voxels come back as 0.

    The voxel bytes are streamed once (1 MiB at a time, no second copy of the volume): a short
    stream is a truncated file; float voxels are checked for non-finite values on the way (the
    module's one rule: refused).
    """
    import gzip
    import zlib

    import nibabel as nib

    try:
        proxy = nib.load(str(path)).dataobj  # header only; the proxy knows where the voxels start
        dtype = np.dtype(proxy.dtype)
        expected = int(np.prod(proxy.shape, dtype=np.int64)) * dtype.itemsize
        offset = int(proxy.offset)
        check_finite = np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating)
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        bad, first_bad, received, carry = 0, None, 0, b""
        with opener(path, "rb") as handle:
            handle.read(offset)
            while received < expected:
                block = handle.read(min(1 << 20, expected - received))
                if not block:
                    break
                if check_finite:
                    start, data = received - len(carry), carry + block  # data begins at byte `start`
                    usable = len(data) - len(data) % dtype.itemsize
                    data, carry = data[:usable], data[usable:]
                    nonfinite = ~np.isfinite(np.frombuffer(data, dtype=dtype))
                    n = int(nonfinite.sum())
                    if n and first_bad is None:
                        first_bad = start // dtype.itemsize + int(np.flatnonzero(nonfinite)[0])
                    bad += n
                received += len(block)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise MedSAMError(f"{path}: truncated or corrupt volume ({first.strip()})") from exc
    if received < expected:
        raise MedSAMError(f"{path}: truncated or corrupt volume (voxel data ends after {received} of "
                          f"{expected} bytes)")
    if bad:
        shape = tuple(int(n) for n in proxy.shape)
        where = np.unravel_index(first_bad, shape, order="F")[::-1] if len(shape) == 3 else None
        raise nonfinite_error(path, bad, where)


MAX_COMPRESSION_RATIO = 2000  # deflate cannot exceed ~1032:1; a header claiming more is corrupt or hostile


def check_claimed_size(path: Path) -> None:
    """Refuse a volume whose header claims more voxel bytes than its file can hold, before
    SimpleITK allocates them (a corrupt or hostile header would otherwise ask for terabytes)."""
    import SimpleITK as sitk

    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    info.ReadImageInformation()  # RuntimeError: the caller reports an unreadable file
    size = tuple(int(n) for n in info.GetSize())
    component = sitk.Image([1] * len(size), info.GetPixelID()).GetSizeOfPixelComponent()
    claimed = int(np.prod(size, dtype=np.float64)) * info.GetNumberOfComponents() * component
    on_disk = path.stat().st_size
    compressed = path.name.lower().endswith(".gz") or path.suffix.lower() in (".nrrd", ".nhdr", ".mha", ".mhd")
    limit = on_disk * MAX_COMPRESSION_RATIO + (1 << 20) if compressed else on_disk
    if path.suffix.lower() in (".mhd", ".nhdr"):
        return  # the voxels are in a second file
    if claimed > limit:
        raise MedSAMError(f"{path}: the header claims a {' x '.join(map(str, size))} volume ({claimed} bytes of voxels) "
                          f"but the file holds only {on_disk} bytes: truncated or corrupt")


@contextlib.contextmanager
def quiet_itk():
    """ITK's own ``WARNING`` lines off while reading (the MedSAMError that follows says it once)."""
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
