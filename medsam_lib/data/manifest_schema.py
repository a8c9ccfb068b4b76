"""Manifest validation: the JSON schema plus the cross-field rules a schema cannot say.

``validate_manifest_dict(data, source)`` checks a manifest held as a dict against
``medsam_lib/schemas/manifest.schema.json`` and then the rules between fields: unique data-set,
image, mask, target and case names; known modalities; palettes for ``rgb`` masks; targets that
name existing masks and map image keys to one of the paper's 30 tasks (``PAPER_TASKS``); either an
explicit case list or patterns whose placeholders the first image pattern defines; relative paths
without ``..``; a mask ``scale`` on 2D data sets only; ``split`` fractions that sum to 1. Every
problem is a MedSAMError naming the manifest and the data set. Building the specs and finding the
cases is ``manifests``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

from ..fileio import MedSAMError
from .preprocess import check_modality
from .splits import check_fractions

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "manifest.schema.json"
SCHEMA_VERSION = 1

# The 30 evaluated tasks of Tables 1-2 (../shared/paper/tasks.csv), as "Target (Modality)".
PAPER_TASKS = (
    "Brain Ventricles (MR-T1)", "Brain Ventricles (MR-T2)", "Brain Tumor (MR-FLAIR)", "Cerebellum (MR-T1)",
    "Cerebellum (MR-T2)", "Gallbladder (MR)", "Left Ventricle (MR)", "Right Ventricle (MR)", "Liver (MR)",
    "Pancreas (MR)", "Prostate (MR-ADC)", "Prostate (MR-T2)", "Abdomen Tumor (CT)", "Gallbladder (CT)",
    "Head-Neck Tumor (CT)", "Liver (CT)", "Lung Infections (CT)", "Pancreas (CT)", "Pleural Effusion (CT)",
    "Stomach (CT)", "Head-Neck Tumor (PET)", "Breast Tumor (Ultrasound)", "Liver (Ultrasound)",
    "Vessel (Ultrasound)", "Heart (X-Ray)", "Lungs (X-Ray)", "Polyp (Endoscope)", "Instrument (Endoscope)",
    "Retinal Vessel (Retinal Image)", "Gland (Pathology)",
)
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(d))?\}")  # {case}, {frame:d} in a pattern
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(volume: str) -> str:
    """A case id as a file name."""
    return _SAFE.sub("_", volume)


def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _short(message: str, limit: int = 300) -> str:
    """A schema message as part of one line: whitespace runs (newlines too) as one space, bounded."""
    text = " ".join(message.split())
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def validate_manifest_dict(data: dict, source: str = "manifest") -> None:
    """Schema validation plus the cross-field rules a JSON schema cannot say; MedSAMError if invalid."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        parts = [f"at {'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {_short(e.message)}" for e in errors[:8]]
        more = f"; ... and {len(errors) - 8} more" if len(errors) > 8 else ""
        raise MedSAMError(f"{source}: not a valid manifest: " + "; ".join(parts) + more)  # one line
    _check_semantics(data, source)


def _check_relative(path: str, where: str) -> None:
    pure = PurePosixPath(path)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", path) or ".." in pure.parts:
        raise MedSAMError(f"{where}: path {path!r} must be relative to the data root, without '..'")


def _check_semantics(data: dict, source: str) -> None:
    if "split" in data:
        check_fractions(data["split"], f"{source}: split")
    seen_ds = set()
    for ds in data["datasets"]:
        where = f"{source}: data set {ds['name']!r}"
        if ds["name"] in seen_ds:
            raise MedSAMError(f"{source}: duplicate data set name {ds['name']!r}")
        seen_ds.add(ds["name"])
        image_keys = [i["key"] for i in ds["images"]]
        mask_keys = [m["key"] for m in ds["masks"]]
        for kind, keys in (("image", image_keys), ("mask", mask_keys)):
            dup = {k for k in keys if keys.count(k) > 1}
            if dup:
                raise MedSAMError(f"{where}: duplicate {kind} key(s) {sorted(dup)}")
        for modality in [ds["modality"]] + [i["modality"] for i in ds["images"]]:
            check_modality(modality, f"{where}: modality")
        for m in ds["masks"]:
            if m.get("encoding") == "rgb" and not m.get("palette"):
                raise MedSAMError(f"{where}: mask {m['key']!r} has encoding 'rgb' but no palette")
            if m.get("scale", 1) != 1 and ds["dimensionality"] != "2D":
                raise MedSAMError(f"{where}: mask {m['key']!r} has scale {m['scale']}, but scale applies to 2D masks "
                                  "only (resample a volume's mask onto its image's grid instead)")
        names = [t["name"] for t in ds["targets"]]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise MedSAMError(f"{where}: duplicate target name(s) {sorted(dup)}")
        for t in ds["targets"]:
            mask = t.get("mask", mask_keys[0])
            if mask not in mask_keys:
                raise MedSAMError(f"{where}: target {t['name']!r} refers to mask {mask!r}; masks: {mask_keys}")
            for key, task in t.get("paper_tasks", {}).items():
                if key not in image_keys:
                    raise MedSAMError(f"{where}: target {t['name']!r} maps image key {key!r} to a task, "
                                      f"but the image keys are {image_keys}")
                if task not in PAPER_TASKS:
                    raise MedSAMError(f"{where}: target {t['name']!r}: {task!r} is not one of the paper's 30 tasks "
                                      f"(e.g. {PAPER_TASKS[0]!r})")
        patterns = [i.get("pattern") for i in ds["images"]] + [m.get("pattern") for m in ds["masks"]]
        if ds.get("case_filter"):
            try:
                re.compile(ds["case_filter"])
            except re.error as exc:
                raise MedSAMError(f"{where}: case_filter {ds['case_filter']!r} is not a valid regular expression ({exc})")
        if "cases" in ds:
            if any(patterns) or ds.get("case_filter") or ds.get("skip_missing_masks"):
                raise MedSAMError(f"{where}: give either an explicit 'cases' list or 'pattern' fields (with "
                                  "case_filter / skip_missing_masks), not both")
            volumes = [c["id"] for c in ds["cases"]]
            dup = sorted({v for v in volumes if volumes.count(v) > 1})
            if dup:
                raise MedSAMError(f"{where}: duplicate case id(s) {dup}")
            slugs = [safe_name(v) for v in volumes]
            clash = sorted({v for v, s in zip(volumes, slugs) if slugs.count(s) > 1})
            if clash:
                raise MedSAMError(f"{where}: case ids {clash} differ only in characters that file names cannot "
                                  "hold; rename them")
            for c in ds["cases"]:
                if set(c["images"]) != set(image_keys) or set(c["masks"]) != set(mask_keys):
                    raise MedSAMError(f"{where}: case {c['id']!r} must give exactly the images {image_keys} and "
                                      f"masks {mask_keys}; it gives {sorted(c['images'])} and {sorted(c['masks'])}")
                for p in list(c["images"].values()) + list(c["masks"].values()):
                    _check_relative(p, f"{where}, case {c['id']!r}")
        else:
            if not all(patterns):
                raise MedSAMError(f"{where}: without a 'cases' list every image and mask needs a 'pattern'")
            first = ds["images"][0]["pattern"]
            names = [m.group(1) for m in PLACEHOLDER.finditer(first)]
            if "case" not in names:
                raise MedSAMError(f"{where}: the first image pattern {first!r} must contain {{case}}")
            for p in patterns:
                _check_relative(p, where)
                extra = {m.group(1) for m in PLACEHOLDER.finditer(p)} - set(names)
                if extra:
                    raise MedSAMError(f"{where}: pattern {p!r} uses placeholder(s) {sorted(extra)} that the first "
                                      f"image pattern {first!r} does not define")
    obtain = data["obtain"]
    for f in obtain.get("files", []):
        _check_relative(f["file_name"], f"{source}: obtain file")
        if f.get("extract_to"):
            _check_relative(f["extract_to"], f"{source}: obtain file {f['file_name']}")
