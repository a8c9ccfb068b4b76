"""Data-set manifests: where a data set comes from and how its files map to the paper's tasks.

A manifest is a JSON file (schema: ``medsam_lib/schemas/manifest.schema.json``; examples in
``data_manifests/``). It names one or more data sets; each data set has
- ``images``: the image series of a case, each with a ``key`` and a ``modality`` (an MSD-style 4D
  file gives several keys through ``channel``);
- ``masks``: label maps, each with an ``encoding`` (``label``, ``binary`` or ``rgb`` + ``palette``),
  a ``threshold`` for ``binary`` / ``rgb``, and a ``scale`` for 2D masks stored at a fraction of
  their image's size (upsampled by nearest neighbour when read);
- ``targets``: one binary target per entry, from the label values it lists (several values are
  merged: e.g. whole tumour = {1, 2, 3, 4}); ``instance: true`` splits it into connected objects;
  ``paper_tasks`` maps image keys to the paper's task names (Tables 1-2);
- its cases: an explicit ``cases`` list, or ``pattern`` fields with placeholders (``{case}``, and
  e.g. ``{frame:d}`` for digits) that are matched against the files under the data root.
All paths are relative to a data root chosen by ``data_root`` (``shared`` = ../shared/data,
``data_home`` = ``$MEDSAM_DATA_DIR/<name>``, ``argument`` = given by the caller,
``relative_to_manifest``). ``obtain`` says how to get the files: ``direct`` downloads (URLs, file
names, sizes and checksums where the source publishes them), or ``manual`` steps and the layout
to place the files in. ``split`` (optional) gives train/validation/test fractions for every data set
(``splits.split_groups``); without it the paper's 80/20 train/test applies.

Validation (schema and cross-field rules) is ``manifest_schema``; this module builds the specs
and finds the cases under a data root.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import MedSAMError, check_input_path
from ..shared import REPO_ROOT, shared_data_dir
from .manifest_schema import PLACEHOLDER, safe_name, validate_manifest_dict

MANIFESTS_DIR = REPO_ROOT / "data_manifests"
MAX_MANIFEST_BYTES = 64 << 20  # the largest shipped manifest is far below this


@dataclass(frozen=True)
class ImageSpec:
    key: str
    modality: str
    channel: int | None = None  # one volume out of a 4D / multi-component file
    intensity: str = "raw"  # "raw": apply the preset's window; "display": already 0-255, kept as is
    pattern: str | None = None


@dataclass(frozen=True)
class MaskSpec:
    key: str
    encoding: str = "label"
    threshold: float | None = None
    palette: dict | None = None  # {label: (r, g, b)} for encoding "rgb"
    pattern: str | None = None
    scale: int = 1  # a 2D mask stored at 1/scale of its image's size: upsampled (nearest) when read


@dataclass(frozen=True)
class TargetSpec:
    name: str
    labels: tuple[int, ...]
    mask: str
    instance: bool = False
    optional: bool = False
    paper_tasks: dict = field(default_factory=dict)  # image key -> "Target (Modality)"
    stand_in: bool = False  # the data differ from the paper's data set for that task


@dataclass(frozen=True)
class CaseSpec:
    volume: str  # unique id of one image/mask set within its data set
    case: str  # the patient / split unit (several volumes may share it)
    images: dict  # image key -> path relative to the data root
    masks: dict  # mask key -> path relative to the data root


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    modality: str
    dimensionality: str
    images: tuple[ImageSpec, ...]
    masks: tuple[MaskSpec, ...]
    targets: tuple[TargetSpec, ...]
    cases: tuple[CaseSpec, ...] | None  # None: discovered from the patterns
    spacing_2d: tuple[float, float] | None
    raw: dict
    case_filter: str | None = None  # the {case} value of a discovered file must match this regular expression
    skip_missing_masks: bool = False  # discovered images without a mask are left out, not an error

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(i.key for i in self.images)


@dataclass(frozen=True)
class FileSpec:
    url: str
    file_name: str
    size: int | None
    checksums: dict
    extract: bool
    extract_to: str


@dataclass(frozen=True)
class Manifest:
    name: str
    description: str
    synthetic: bool
    data_root: dict
    obtain: dict
    files: tuple[FileSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    path: Path | None
    sha256: str
    raw: dict
    split: dict | None = None  # {"train", "validation", "test"} fractions; None: the paper's 80/20 train/test

    def dataset(self, name: str) -> DatasetSpec:
        for ds in self.datasets:
            if ds.name == name:
                return ds
        raise MedSAMError(f"manifest {self.name}: no data set named {name!r} "
                          f"(data sets: {', '.join(d.name for d in self.datasets)})")


def data_home() -> Path:
    """Where fetched data sets live: ``$MEDSAM_DATA_DIR``, else the cache folder's ``data/``."""
    if os.environ.get("MEDSAM_DATA_DIR"):
        return Path(os.environ["MEDSAM_DATA_DIR"])
    if os.environ.get("MEDSAM_CACHE_DIR"):
        return Path(os.environ["MEDSAM_CACHE_DIR"]) / "data"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "medsam_lib" / "data"


def list_manifests() -> list[Path]:
    return sorted(MANIFESTS_DIR.glob("*.json"))


def find_manifest(name_or_path: str | os.PathLike) -> Path:
    """A manifest file by path, or by name in ``data_manifests/``."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise MedSAMError(f"{path}: no such manifest file")
        return check_input_path(path, "manifest", allow_dir=False)
    candidate = MANIFESTS_DIR / f"{name_or_path}.json"
    if candidate.is_file():
        return candidate
    names = ", ".join(p.stem for p in list_manifests())
    raise MedSAMError(f"no manifest named {name_or_path!r}; known: {names} (or give a path to a .json file)")


def _build(data: dict, path: Path | None, digest: str) -> Manifest:
    datasets = []
    for ds in data["datasets"]:
        images = tuple(ImageSpec(i["key"], i["modality"], i.get("channel"), i.get("intensity", "raw"),
                                 i.get("pattern")) for i in ds["images"])
        masks = tuple(MaskSpec(m["key"], m.get("encoding", "label"), m.get("threshold"),
                               {int(k): tuple(v) for k, v in m["palette"].items()} if m.get("palette") else None,
                               m.get("pattern"), int(m.get("scale", 1))) for m in ds["masks"])
        targets = tuple(TargetSpec(t["name"], tuple(int(v) for v in t["labels"]), t.get("mask", masks[0].key),
                                   bool(t.get("instance", False)), bool(t.get("optional", False)),
                                   dict(t.get("paper_tasks", {})), bool(t.get("stand_in", False)))
                        for t in ds["targets"])
        cases = None
        if "cases" in ds:
            cases = tuple(CaseSpec(c["id"], c.get("case", c["id"]), dict(c["images"]), dict(c["masks"]))
                          for c in ds["cases"])
        spacing = tuple(float(s) for s in ds["spacing_2d"]) if ds.get("spacing_2d") else None
        datasets.append(DatasetSpec(ds["name"], ds["title"], ds["modality"], ds["dimensionality"], images, masks,
                                    targets, cases, spacing, ds, ds.get("case_filter"),
                                    bool(ds.get("skip_missing_masks", False))))
    files = tuple(FileSpec(f["url"], f["file_name"], f.get("size"), dict(f.get("checksums", {})),
                           bool(f.get("extract", False)), f.get("extract_to", ""))
                  for f in data["obtain"].get("files", []))
    return Manifest(data["name"], data["description"], bool(data.get("synthetic", False)), data["data_root"],
                    data["obtain"], files, tuple(datasets), path, digest, data,
                    dict(data["split"]) if data.get("split") else None)


def load_manifest(name_or_path: str | os.PathLike) -> Manifest:
    """Read, validate and return a manifest (by name in ``data_manifests/`` or by path)."""
    path = find_manifest(name_or_path)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise MedSAMError(f"{path}: {path.stat().st_size} bytes is too large for a manifest (limit "
                          f"{MAX_MANIFEST_BYTES}); is this the right file?")
    text = path.read_bytes()
    try:
        data = json.loads(text.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise MedSAMError(f"{path}: not a text file (byte {exc.start} is not UTF-8); a manifest is a JSON text "
                          "file") from exc
    except json.JSONDecodeError as exc:
        raise MedSAMError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except RecursionError as exc:
        raise MedSAMError(f"{path}: JSON nested too deeply to be a manifest") from exc
    if not isinstance(data, dict):
        raise MedSAMError(f"{path}: a manifest is a JSON object, got {type(data).__name__}")
    try:
        validate_manifest_dict(data, str(path))
    except RecursionError as exc:
        raise MedSAMError(f"{path}: JSON nested too deeply to be a manifest") from exc
    return _build(data, path, hashlib.sha256(text).hexdigest())


def manifest_from_dict(data: dict, path: Path | None = None) -> Manifest:
    """Validate and build a manifest held in memory (``path``: where it will live, for relative roots)."""
    validate_manifest_dict(data, str(path or "manifest"))
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return _build(data, path, digest)


def resolve_root(manifest: Manifest, root: str | os.PathLike | None = None) -> Path:
    """The data root a manifest's relative paths start from (``root`` overrides the manifest's choice)."""
    if root is not None:
        return Path(root)
    kind = manifest.data_root["kind"]
    if kind == "shared":
        return shared_data_dir()
    if kind == "data_home":
        return data_home() / manifest.name
    if kind == "relative_to_manifest":
        if manifest.path is None:
            raise MedSAMError(f"manifest {manifest.name}: data_root is relative to the manifest file, "
                              "but the manifest has no file; pass the data root explicitly")
        return (manifest.path.parent / manifest.data_root["path"]).resolve()
    raise MedSAMError(f"manifest {manifest.name}: its data root must be given (--root DIR)")

def _compile(pattern: str) -> tuple[str, re.Pattern, list[str]]:
    glob_parts, regex_parts, names = [], [], []
    pos = 0
    for m in PLACEHOLDER.finditer(pattern):
        literal = pattern[pos:m.start()]
        glob_parts.append(glob.escape(literal))
        regex_parts.append(re.escape(literal))
        name, digits = m.group(1), m.group(2)
        if not "".join(glob_parts).endswith("*"):  # adjacent placeholders ({case}{eye}): one '*', as '**' recurses
            glob_parts.append("*")
        if name in names:
            regex_parts.append(f"(?P={name})")
        else:
            names.append(name)
            regex_parts.append(f"(?P<{name}>\\d+)" if digits else f"(?P<{name}>[^/]+)")
        pos = m.end()
    glob_parts.append(glob.escape(pattern[pos:]))
    regex_parts.append(re.escape(pattern[pos:]))
    return "".join(glob_parts), re.compile("".join(regex_parts)), names


def _fill(pattern: str, values: dict) -> str:
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], pattern)


def resolve_cases(dataset: DatasetSpec, root: str | os.PathLike) -> list[CaseSpec]:
    """The cases of a data set under ``root``: the explicit list, or those its patterns find.

    Every file a case names must exist; missing ones are listed in one MedSAMError (nothing is guessed).
    """
    root = Path(root)
    if not root.is_dir():
        raise MedSAMError(f"data set {dataset.name}: data root {root} does not exist "
                          "(fetch the data set, or give the folder that holds it)")
    if dataset.cases is not None:
        cases = list(dataset.cases)
    else:
        glob_str, regex, names = _compile(dataset.images[0].pattern)
        keep = re.compile(dataset.case_filter) if dataset.case_filter else None
        cases, seen = [], {}
        for found in sorted(root.glob(glob_str)):
            rel = found.relative_to(root).as_posix()
            match = regex.fullmatch(rel)
            if not match:
                continue
            values = match.groupdict()
            volume = "_".join(values[n] for n in names)
            if keep is not None and not keep.fullmatch(values["case"]):
                continue
            if dataset.skip_missing_masks and not all((root / _fill(m.pattern, values)).exists() for m in dataset.masks):
                continue
            if volume in seen:
                raise MedSAMError(f"data set {dataset.name}: case id {volume!r} found twice ({seen[volume]} and {rel})")
            seen[volume] = rel
            cases.append(CaseSpec(volume, values["case"],
                                  {i.key: _fill(i.pattern, values) for i in dataset.images},
                                  {m.key: _fill(m.pattern, values) for m in dataset.masks}))
        if not cases:
            raise MedSAMError(f"data set {dataset.name}: no file under {root} matches {dataset.images[0].pattern!r}; "
                              "is the data set fetched and laid out as its manifest's 'obtain' says?")
    slugs: dict[str, str] = {}
    for c in cases:
        other = slugs.setdefault(safe_name(c.volume), c.volume)
        if other != c.volume:
            raise MedSAMError(f"data set {dataset.name}: case ids {other!r} and {c.volume!r} map to the same file "
                              "name; rename one")
    missing = [f"{c.volume}: {p}" for c in cases for p in list(c.images.values()) + list(c.masks.values())
               if not (root / p).exists()]
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise MedSAMError(f"data set {dataset.name}: {len(missing)} file(s) missing under {root}:\n  {shown}")
    return cases
