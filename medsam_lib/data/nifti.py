"""What a NIfTI header must say before SimpleITK reads the file (used by ``readers.read_volume``).

SimpleITK either fails on these with a message that reads "truncated or corrupt", or reads them
silently in one of two possible ways; each is named instead:
- compression that does not match the name (a plain NIfTI named ``.nii.gz``, or the reverse);
- NIfTI-2 (540-byte header): this SimpleITK cannot read it; refused as unsupported, with the fix;
- a sheared voxel grid (the sform's axes are not perpendicular): ITK has no direction for it;
- a qform and an sform that are both set and disagree: ITK follows one and hides its warning, a
  viewer may follow the other. Orientation metadata a viewer applies is applied or refused, never
  ignored, so the file is refused with both transforms named. (One set, or both equal: read.)
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..fileio import MedSAMError

_GZIP_MAGIC = b"\x1f\x8b"
TOLERANCE_MM = 1e-3  # qform and sform agree when no entry differs by more (the qform is stored in float32)


def _origin_and_axes(affine: np.ndarray) -> str:
    a = np.asarray(affine, dtype=float)
    return f"origin {tuple(round(float(v), 3) for v in a[:3, 3])}, axes {np.round(a[:3, :3], 3).tolist()}"


def check_nifti_header(path: Path) -> None:
    """Refuse (MedSAMError naming the file and the real problem) what the module docstring lists."""
    import gzip

    import nibabel as nib

    with open(path, "rb") as handle:
        head = handle.read(4)
    gzipped = head[:2] == _GZIP_MAGIC
    named_gz = path.name.lower().endswith(".gz")
    if named_gz and not gzipped:
        raise MedSAMError(f"{path}: named .nii.gz but not gzip-compressed (a plain NIfTI?); rename it to .nii")
    if gzipped and not named_gz:
        raise MedSAMError(f"{path}: gzip-compressed but named .nii; rename it to .nii.gz")
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as handle:
            raw = handle.read(4)
    except (OSError, EOFError) as exc:
        raise MedSAMError(f"{path}: truncated or corrupt volume ({exc})") from exc
    if len(raw) == 4 and 540 in (struct.unpack("<i", raw)[0], struct.unpack(">i", raw)[0]):
        raise MedSAMError(f"{path}: a NIfTI-2 file, which this reader (SimpleITK) does not support; convert it "
                          "to NIfTI-1, e.g. nibabel.save(nibabel.Nifti1Image(img.dataobj, img.affine), 'out.nii.gz')")
    try:
        header = nib.load(str(path)).header
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the SimpleITK read that follows
        return
    if scode and sform is not None:
        axes = np.asarray(sform, dtype=float)[:3, :3]
        norms = np.linalg.norm(axes, axis=0)
        if np.all(norms > 0):
            unit = axes / norms
            off = np.abs(unit.T @ unit - np.eye(3))
            if off.max() > 1e-4:
                raise MedSAMError(f"{path}: the sform describes a sheared voxel grid (its axes are not "
                                  f"perpendicular: {np.round(axes, 4).tolist()}); SimpleITK cannot represent a "
                                  "shear: resample the volume onto a non-sheared grid")
    if qcode and scode and qform is not None and sform is not None:
        if not np.allclose(qform, sform, atol=TOLERANCE_MM, rtol=0):
            raise MedSAMError(f"{path}: the qform (code {int(qcode)}: {_origin_and_axes(qform)}) and the sform "
                              f"(code {int(scode)}: {_origin_and_axes(sform)}) disagree, so viewers may place the "
                              "volume differently; set one of them to match the other (or its code to 0)")
