"""DICOM series folders, checked: GDCM silently drops a truncated slice (and then reports the
spacing of the slices left), so the folder's files and the slice positions are checked first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import MedSAMError, check_input_path


def _dicom_like(path: Path) -> bool:
    """A file that claims to be DICOM: the .dcm suffix, or 'DICM' at byte 128."""
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom_series(path: Path):
    """One DICOM series folder -> (SimpleITK image, modality). Refuses what GDCM would silently
    drop or misread: a file in the folder that claims to be DICOM but is not part of the series
    (truncated, corrupt), slices of different sizes or orientations, two slices at one position and
    slices that are not evenly spaced (a missing slice), and slices that advance off the slice normal
    (a gantry-tilted or sheared series, whose shear the volume's geometry cannot hold)."""
    import SimpleITK as sitk

    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    for entry in entries:
        check_input_path(entry, "DICOM series file", allow_dir=True)  # a pipe would block GDCM's scan
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise MedSAMError(f"{path}: folder holds no DICOM series")
    if len(series) > 1:
        raise MedSAMError(f"{path}: folder holds {len(series)} DICOM series; give a folder with one")
    files = reader.GetGDCMSeriesFileNames(str(path), series[0])
    in_series = {Path(f).resolve() for f in files}
    left_out = [e for e in entries if e.is_file() and e.resolve() not in in_series and e.name.upper() != "DICOMDIR"
                and _dicom_like(e)]
    if left_out:
        names = ", ".join(e.name for e in left_out[:5]) + (" ..." if len(left_out) > 5 else "")
        raise MedSAMError(f"{path}: {len(left_out)} DICOM file(s) could not be read as part of the series "
                          f"({names}; {len(files)} slice(s) read of {len(files) + len(left_out)} files): truncated "
                          "or corrupt? Replace or remove them")
    positions, origins, normal, first = [], [], None, None
    for f in files:
        info = sitk.ImageFileReader()
        info.SetFileName(f)
        try:
            info.ReadImageInformation()
        except RuntimeError as exc:
            raise MedSAMError(f"{f}: truncated or corrupt DICOM file (SimpleITK cannot read its header)") from exc
        d = np.asarray(info.GetDirection(), dtype=float)
        size = tuple(int(n) for n in info.GetSize()[:2])
        if first is None:
            first = (Path(f).name, size, d)
            normal = d.reshape(3, 3)[:, 2] if d.size == 9 else np.array([0.0, 0.0, 1.0])
        elif size != first[1]:
            raise MedSAMError(f"{path}: slices differ in size ({first[0]} is {first[1][0]} x {first[1][1]}, "
                              f"{Path(f).name} is {size[0]} x {size[1]}); one series has one slice size: remove "
                              "the slices that belong elsewhere")
        elif d.shape != first[2].shape or not np.allclose(d, first[2], atol=1e-4):
            raise MedSAMError(f"{path}: slices differ in orientation ({first[0]} and {Path(f).name}: "
                              "ImageOrientationPatient differs); they cannot be stacked as one volume: split "
                              "the series by orientation")
        origins.append(np.asarray(info.GetOrigin(), dtype=float)[:3])
        positions.append(float(np.dot(origins[-1], normal)))
    order = np.argsort(positions)
    gaps = np.abs(np.diff(np.asarray(positions)[order]))
    if gaps.size and gaps.min() <= 1e-3:
        i = int(np.argmin(gaps))
        same = ", ".join(Path(files[j]).name for j in order[i:i + 2])
        raise MedSAMError(f"{path}: two slices at the same position {positions[order[i]]:g} mm ({same}); the "
                          "spacing between slices is undefined: remove the duplicate")
    _check_not_tilted(path, [origins[j] for j in order], normal, [Path(files[j]).name for j in order])
    if len(positions) >= 3:
        step = float(np.median(gaps))
        irregular = np.flatnonzero(np.abs(gaps - step) > max(1e-3, 0.01 * step))
        if irregular.size:
            i = int(irregular[0])
            raise MedSAMError(f"{path}: slices are not evenly spaced (gap {gaps[i]:g} mm where the others are "
                              f"{step:g} mm); a slice is missing: complete the series")
    reader.SetFileNames(files)
    image = reader.Execute()
    modality = None
    try:
        one = sitk.ReadImage(files[0])
        modality = one.GetMetaData("0008|0060").strip() if one.HasMetaDataKey("0008|0060") else None
    except RuntimeError:
        modality = None
    return image, modality


TILT_TOLERANCE = 0.01  # largest step component across the slice normal, as a fraction of the step along it


def _check_not_tilted(path: Path, origins: list, normal: np.ndarray, names: list[str]) -> None:
    """The step between consecutive slice positions (sorted along the normal) must be parallel to
    the slice normal (the cross product of ImageOrientationPatient's row and column vectors): a
    volume's geometry has no shear, so a tilted series read as one would drop it silently."""
    for i in range(len(origins) - 1):
        step = origins[i + 1] - origins[i]
        along = abs(float(np.dot(step, normal)))
        across = float(np.linalg.norm(step - np.dot(step, normal) * normal))
        if across > TILT_TOLERANCE * along + 1e-3:
            angle = float(np.degrees(np.arctan2(across, along)))
            raise MedSAMError(f"{path}: the series is tilted (sheared): from {names[i]} to {names[i + 1]} the "
                              f"slice position moves {across:g} mm across the slice normal for {along:g} mm along "
                              f"it ({angle:.1f} degrees, e.g. a gantry tilt); a volume cannot hold that shear: "
                              "resample the series to an orthogonal grid first")
