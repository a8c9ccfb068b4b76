"""Profiles are data: the checks a profile passes before any kernel starts (``runner.run_profile``).

- its name (``--profile``) is a plain name, ``[A-Za-z0-9][A-Za-z0-9_-]*``, of a file in
  ``medsam_lib/profiles/``: no path, no ``..``, so its results stay in ``results/<name>``;
- the file is a JSON object: ``description`` (text), the run's settings ``data_source``
  ("synthetic", "shared" or "cohorts"), ``model`` (zoo name or checkpoint), ``seed`` (0 <= int < 2**32),
  ``device`` ("auto", "cpu", "cuda", ...) and ``parameters`` (object, the notebooks' defaults);
- every parameter name is a Python identifier that a notebook declares in its ``parameters``-tagged
  cell (papermill pastes names into the injected cell as they are, so a name is code);
- every value is a JSON scalar (text, number, true/false, null) or a list of them, of the type of
  the notebooks' declared default (an int where the default is a float is fine; a default of
  ``None`` takes any of them); no NaN or infinity.
"""
from __future__ import annotations

import ast
import json
import keyword
import math
import re
from pathlib import Path

from .fileio import MedSAMError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RUNNER_SET = ("profile",)  # the runner sets this from the profile's name
SETTINGS = {"data_source": "synthetic", "model": "litemedsam", "seed": 0, "device": "auto"}  # and their defaults
DATA_SOURCES = ("synthetic", "shared", "cohorts")
TOP_LEVEL = ("description", *SETTINGS, "parameters")
SEED_LIMIT = 2 ** 32  # numpy's and torch's seeds
_SCALARS = (str, int, float, bool, type(None))


def check_profile_name(name: str, available: list[str]) -> str:
    """``name`` if it is a plain profile name that exists; MedSAMError naming ``--profile`` otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise MedSAMError(f"--profile {name!r}: not a profile name (letters, digits, '-' and '_'; no paths); "
                          f"available: {', '.join(available)}")
    if name not in available:
        raise MedSAMError(f"--profile: unknown profile {name!r}; available: {', '.join(available)}")
    return name


def declared_parameters(notebooks: list[Path]) -> dict[str, set[type]]:
    """Name -> the types of its defaults, over the ``parameters``-tagged cells of ``notebooks``."""
    declared: dict[str, set[type]] = {}
    for path in notebooks:
        try:
            cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        except (OSError, ValueError) as exc:
            raise MedSAMError(f"{path}: cannot read the notebook's parameters cell ({exc})") from exc
        for cell in cells:
            if "parameters" not in cell.get("metadata", {}).get("tags", []):
                continue
            source = cell.get("source", "")
            for node in ast.parse("".join(source) if isinstance(source, list) else source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        default = ast.literal_eval(node.value)
                    except ValueError:
                        default = None  # not a literal: any JSON value
                    declared.setdefault(node.targets[0].id, set()).add(type(default))
    return declared


def _value_problem(value, types: set[type]) -> str | None:
    """Why ``value`` cannot be this parameter's value, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    if isinstance(value, list):
        if not all(isinstance(v, _SCALARS) for v in value):
            return "lists may hold only text, numbers, true/false and null"
        if any(isinstance(v, float) and not math.isfinite(v) for v in value):
            return "the list holds a number that is not finite"
    elif not isinstance(value, _SCALARS):
        return f"a {type(value).__name__} (JSON object); values are text, numbers, true/false, null or lists"
    if type(None) in types or type(value) in types:
        return None
    if float in types and type(value) is int:
        return None
    wanted = " or ".join(sorted({"text" if t is str else "a list" if t is list else t.__name__ for t in types}))
    return f"{json.dumps(value)[:60]} is {'text' if isinstance(value, str) else type(value).__name__}; the notebooks' " \
           f"default is {wanted}"


def _check_settings(path: Path, profile: dict) -> dict:
    """The four settings with their defaults filled in, each checked."""
    settings = {k: profile.get(k, default) for k, default in SETTINGS.items()}
    if settings["data_source"] not in DATA_SOURCES:
        raise MedSAMError(f"{path}: 'data_source' must be one of {', '.join(DATA_SOURCES)}, "
                          f"got {json.dumps(settings['data_source'])[:60]}")
    for key in ("model", "device"):
        if not isinstance(settings[key], str) or not settings[key].strip():
            raise MedSAMError(f"{path}: {key!r} must be non-empty text, got {json.dumps(settings[key])[:60]}")
    seed = settings["seed"]
    if type(seed) is not int or not 0 <= seed < SEED_LIMIT:
        raise MedSAMError(f"{path}: 'seed' must be an integer from 0 to {SEED_LIMIT - 1}, got {json.dumps(seed)[:60]}")
    return settings


def check_profile(path: Path, profile, declared: dict[str, set[type]]) -> dict:
    """The profile, checked as the module docstring says, with its settings' defaults filled in;
    MedSAMError naming the file."""
    if not isinstance(profile, dict):
        raise MedSAMError(f"{path}: a profile is a JSON object with {', '.join(TOP_LEVEL)}")
    unknown = [k for k in profile if k not in TOP_LEVEL]
    if unknown:
        raise MedSAMError(f"{path}: unknown key {unknown[0]!r}; a profile has only {', '.join(TOP_LEVEL)}")
    if not isinstance(profile.get("description", ""), str):
        raise MedSAMError(f"{path}: 'description' must be text")
    settings = _check_settings(path, profile)
    params = profile.get("parameters", {})
    if not isinstance(params, dict):
        raise MedSAMError(f"{path}: 'parameters' must be an object of name: value")
    for name, value in params.items():
        shown = json.dumps(name)[:80]
        if not name.isidentifier() or keyword.iskeyword(name):
            raise MedSAMError(f"{path}: parameter name {shown} is not a Python identifier")
        if name in RUNNER_SET:
            raise MedSAMError(f"{path}: parameter {shown} is set by the runner from the profile's name; remove it")
        if name in SETTINGS or name in ("results_dir", "shared_data_dir"):
            raise MedSAMError(f"{path}: {shown} is a setting of the profile, not a notebook parameter: move it out "
                              "of 'parameters' to the top level (results_dir and shared_data_dir follow from the "
                              "profile's name and MEDSAM_SHARED_DIR)")
        if name not in declared:
            raise MedSAMError(f"{path}: parameter {shown} is not declared in any notebook's parameters cell; "
                              f"declared: {', '.join(sorted(set(declared) - set(RUNNER_SET)))}")
        problem = _value_problem(value, declared[name])
        if problem:
            raise MedSAMError(f"{path}: parameter {shown}: {problem}")
    return {"description": profile.get("description", ""), **settings, "parameters": params}


def load_profile_file(path: Path) -> dict:
    """The JSON of a profile file (NaN and Infinity refused), MedSAMError naming the file."""
    def no_constant(text):
        raise ValueError(f"{text} is not a JSON number")

    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MedSAMError(f"{path}: invalid JSON ({exc})") from exc
    except OSError as exc:
        raise MedSAMError(f"{path}: cannot read the profile ({exc.strerror or exc})") from exc
