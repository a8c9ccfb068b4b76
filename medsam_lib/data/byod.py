"""Bring your own data: write a manifest from a folder of images and a folder of masks.

``python -m medsam_lib data init --images DIR --masks DIR --modality M --out FILE`` pairs files by
name (``case.png`` with ``case.png``, ``case.nii.gz`` with ``case.nii.gz``; a mask named
``case_mask.png`` pairs only when ``--mask-suffix _mask`` says so), reads every mask to find its
label values, and writes a manifest whose cases list every pair. Curation, embeddings,
fine-tuning and evaluation then run on it as on any other manifest.

Nothing is guessed: images without a mask, masks without an image, names that occur twice and
pairs whose sizes differ are listed in one error (``--skip-unpaired`` writes the manifest from the
good pairs and still lists the rest). A mask with no foreground at all is such a problem too:
``data curate`` refuses a case whose mask holds none of its required labels, so ``data init``
lists the pair (and leaves it out with ``--skip-unpaired``) rather than write a manifest that
curation rejects. Mask encodings: volumes and grey 2D label maps keep their
values; 0/255 (or 0/1) 2D masks and JPEG masks become binary (thresholded at 127); colour masks
become an ``rgb`` palette with one label per colour found.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from ..fileio import MedSAMError, atomic_write_text, check_output_path
from .manifests import manifest_from_dict
from .preprocess import check_modality
from .integrity import open_2d, quiet_itk
from .readers import IMAGE_2D_SUFFIXES, LOSSY_SUFFIXES, VOLUME_SUFFIXES, file_kind, read_mask

_NAME = re.compile(r"[^a-z0-9_]+")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES | IMAGE_2D_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _listing(folder: Path, what: str) -> tuple[dict[str, Path], list[str]]:
    if not folder.is_dir():
        raise MedSAMError(f"{folder}: the {what} folder " + ("is a file, not a folder" if folder.exists() else "does not exist"))
    found, problems = {}, []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        try:
            file_kind(path)
        except MedSAMError as exc:
            reason = str(exc).split(": ", 1)[-1] if "unsupported file type" not in str(exc) else \
                "not an image file this tool reads"
            problems.append(f"{what} {path.name}: {reason} (skipped)")
            continue
        stem = _stem(path)
        if stem in found:
            problems.append(f"{what} name {stem!r} occurs twice: {found[stem].name} and {path.name}")
            continue
        found[stem] = path
    if not found:
        raise MedSAMError(f"{folder}: no image files found in the {what} folder")
    return found, problems


def _size(path: Path) -> tuple[int, ...]:
    """(H, W) of a 2D file or (Z, Y, X) of a volume, from its header."""
    if file_kind(path) == "2d":
        with open_2d(path, "image") as img:
            return (img.size[1], img.size[0])
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise MedSAMError(f"{path}: SimpleITK cannot read its header (truncated or not an image?)") from exc
    return tuple(int(s) for s in reader.GetSize()[::-1])


def _parse_labels(text: str | None) -> dict[int, str]:
    names = {}
    if not text:
        return names
    for part in text.split(","):
        if "=" not in part:
            raise MedSAMError(f"--labels: expected VALUE=NAME pairs separated by commas, got {part!r}")
        value, name = part.split("=", 1)
        try:
            names[int(value)] = name.strip()
        except ValueError:
            raise MedSAMError(f"--labels: {value!r} is not an integer label value") from None
    return names


def _mask_encoding(path: Path) -> tuple[dict, dict[int, int]]:
    """(mask spec fields, {label: 1}) for one mask file; colour masks give their colours as labels.
    An empty mask (no foreground) gives no labels (and, for rgb, no colours)."""
    if file_kind(path) != "2d":
        values = np.unique(read_mask(path, "label").array)
        return {"encoding": "label"}, {int(v): 1 for v in values if v}
    try:
        with open_2d(path, "mask image") as img:
            array = np.array(img.convert("RGB")) if img.mode not in ("1", "L", "I", "I;16", "P") else np.array(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise MedSAMError(f"{path}: truncated or corrupt mask image ({exc})") from exc
    if path.suffix.lower() in LOSSY_SUFFIXES:
        return {"encoding": "binary", "threshold": 127}, ({1: 1} if (array > 127).any() else {})
    if array.ndim == 3 and not (array == array[..., :1]).all():
        bits = array[..., :3] > 127
        colours = {tuple(int(c) * 255 for c in colour) for colour in np.unique(bits.reshape(-1, 3), axis=0)}
        colours.discard((0, 0, 0))
        return {"encoding": "rgb", "threshold": 127, "colours": colours}, {}
    grey = array[..., 0] if array.ndim == 3 else array
    values = {int(v) for v in np.unique(grey)}
    if values <= {0, 255} or values <= {0, 1} or array.dtype == bool:
        return {"encoding": "binary", "threshold": 0}, ({1: 1} if values - {0} else {})
    return {"encoding": "label"}, {v: 1 for v in values if v}


def init_manifest(images: str | os.PathLike, masks: str | os.PathLike, modality: str, out: str | os.PathLike,
                  name: str | None = None, labels: str | None = None, mask_suffix: str = "",
                  skip_unpaired: bool = False) -> tuple[Path, list[str]]:
    """Write a manifest for the image/mask pairs in two folders; returns (path, problems listed)."""
    images, masks, out = Path(images), Path(masks), Path(out)
    if out.suffix != ".json":
        raise MedSAMError(f"--out {out}: the manifest file name must end in .json")
    check_output_path(out)
    check_modality(modality)
    name = name or _NAME.sub("_", out.stem.lower()).strip("_") or "my_data"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", name):
        raise MedSAMError(f"--name {name!r}: use lower-case letters, digits and '_' (starting with a letter or digit)")
    image_files, problems = _listing(images, "image")
    mask_listing, mask_problems = _listing(masks, "mask")
    problems += mask_problems
    mask_files = {}
    for stem, path in mask_listing.items():
        if mask_suffix:
            if not stem.endswith(mask_suffix):
                problems.append(f"mask {path.name}: name does not end in {mask_suffix!r}")
                continue
            stem = stem[: -len(mask_suffix)]
        mask_files[stem] = path
    pairs = []
    for stem in sorted(set(image_files) | set(mask_files)):
        if stem not in mask_files:
            problems.append(f"image {image_files[stem].name}: no mask named {stem}{mask_suffix}.*")
        elif stem not in image_files:
            problems.append(f"mask {mask_files[stem].name}: no image named {stem}.*")
        else:
            pairs.append((stem, image_files[stem], mask_files[stem]))
    if not mask_suffix and not pairs:
        common = os.path.commonprefix([s[::-1] for s in mask_files])[::-1]
        common = common[min((i for i in (common.find("_"), common.find("-")) if i >= 0), default=len(common)):]
        if common:
            problems.append(f"hint: every mask name ends in {common!r}; pass --mask-suffix {common} if that marks masks")
    kinds = {file_kind(p[1]) for p in pairs} | {file_kind(p[2]) for p in pairs}
    if len(kinds) > 1:
        raise MedSAMError(f"{images} / {masks}: mix of 2D images and volumes; give one kind per manifest")
    good, encodings = [], set()
    for stem, image, mask in pairs:
        size_i, size_m = _size(image), _size(mask)
        if size_i != size_m:
            problems.append(f"pair {stem}: image {image.name} has size {size_i} but mask {mask.name} has {size_m}")
            continue
        fields, found = _mask_encoding(mask)
        if not found and not fields.get("colours"):
            problems.append(f"pair {stem}: mask {mask.name} is empty (no foreground label); curation would refuse it")
            continue
        encodings.add(fields["encoding"])
        good.append((stem, image, mask, fields, found))
    if len(encodings) > 1:
        raise MedSAMError(f"{masks}: masks of mixed kinds ({sorted(encodings)}); convert them to one encoding")
    real_problems = [p for p in problems if not p.startswith("hint:")]
    if (real_problems and not skip_unpaired) or not good:
        shown = "\n  ".join(problems[:50]) + (f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else "")
        raise MedSAMError(f"{len(real_problems)} problem(s) pairing {images} with {masks}"
                          f"{' (no usable pair left)' if not good else ''}:\n  {shown}\n"
                          "fix them, or pass --skip-unpaired to write the manifest from the good pairs")
    encoding = encodings.pop()
    mask_spec = {"key": "label", "encoding": encoding}
    label_counts: dict[int, int] = {}
    if encoding == "rgb":
        colours = sorted(set().union(*(g[3]["colours"] for g in good)))
        mask_spec.update({"threshold": 127, "palette": {str(i + 1): list(c) for i, c in enumerate(colours)}})
        for g in good:
            for colour in g[3]["colours"]:
                label = colours.index(colour) + 1
                label_counts[label] = label_counts.get(label, 0) + 1
    else:
        if encoding == "binary":
            mask_spec["threshold"] = max(g[3]["threshold"] for g in good)
        for g in good:
            for value in g[4]:
                label_counts[value] = label_counts.get(value, 0) + 1
    names = _parse_labels(labels)
    unknown = sorted(set(names) - set(label_counts))
    if unknown:
        raise MedSAMError(f"--labels names value(s) {unknown}, but the masks hold only {sorted(label_counts)}")
    if not label_counts:
        raise MedSAMError(f"{masks}: every mask is empty (no foreground label); nothing to curate")
    targets = []
    for value in sorted(label_counts):
        target = {"name": names.get(value, f"label_{value}"), "labels": [value]}
        if label_counts[value] < len(good):
            target["optional"] = True
        targets.append(target)
    root = Path(os.path.commonpath([images.resolve(), masks.resolve()]))
    rel_root = os.path.relpath(root, out.resolve().parent)
    dimensionality = "3D" if kinds == {"volume"} else "2D"
    cases = [{"id": stem, "images": {"image": image.resolve().relative_to(root).as_posix()},
              "masks": {"label": mask.resolve().relative_to(root).as_posix()}} for stem, image, mask, _, _ in good]
    manifest = {
        "schema_version": 1, "name": name,
        "description": f"Your own data: {len(good)} image/mask pairs from {images.name}/ and {masks.name}/ "
                       "(written by `python -m medsam_lib data init`).",
        "data_root": {"kind": "relative_to_manifest", "path": rel_root},
        "obtain": {"method": "local", "source_url": "your own files",
                   "layout": [f"{images.resolve().relative_to(root).as_posix() or '.'}/<case> image files",
                              f"{masks.resolve().relative_to(root).as_posix() or '.'}/<case>{mask_suffix} mask files"]},
        "datasets": [{
            "name": name, "title": f"Your own {modality} data ({len(good)} cases)", "modality": modality,
            "dimensionality": dimensionality, "citation": "your own data: add the citation here",
            "license": {"name": "your own", "terms": "state the terms under which the data may be used"},
            "images": [{"key": "image", "modality": modality}], "masks": [mask_spec], "targets": targets,
            "cases": cases,
            "notes": ["target names label_<value> are placeholders: rename them (--labels 1=liver,...)"]
            if any(t["name"].startswith("label_") for t in targets) else []}],
    }
    manifest_from_dict(manifest, out)  # validate before writing
    atomic_write_text(out, json.dumps(manifest, indent=2) + "\n")
    return out, problems
