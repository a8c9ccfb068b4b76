"""A run's settings in one object: the profile, built once from a notebook's parameters cell.

    from medsam_lib.profile import open_profile
    run = open_profile("demo")     # medsam_lib/profiles/demo.json, checked; results/demo claimed
    run.data_source, run.model, run.seed, run.device
    run.results_dir                # results/<name> (``$MEDSAM_RESULTS_ROOT/<name>`` when set)
    run.layout                     # ResultsLayout of that folder
    run.data_root                  # the phantoms' folder (synthetic) or ../shared/data (shared)

A profile is a JSON file in ``medsam_lib/profiles/``: ``description``, the four settings that decide
what a results folder holds (``data_source``, ``model``, ``seed``) and how it runs (``device``), and
``parameters``, defaults for the notebooks' own parameters. Its name is its results folder, so the
profile is the one thing a reader changes. ``open_profile`` records the settings in
``results/<name>/profile.json`` the first time and refuses, before any work, a folder written with
other settings (see ``claim``): results of two settings never mix in one folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .fileio import MedSAMError, atomic_write_text, quote
from .layout import ResultsLayout, shown
from .profile_check import check_profile, check_profile_name, declared_parameters, load_profile_file
from .shared import REPO_ROOT, shared_data_dir, shared_dir

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RECORD = "profile.json"  # in the results folder: the settings that wrote it
IDENTITY = ("data_source", "model", "seed")  # what a results folder's contents depend on
MANIFESTS = {"synthetic": "synthetic", "shared": "shared_data", "cohorts": "cohorts"}  # data_manifests/NAME.json


def results_root() -> Path:
    """Where each profile's results folder lives: ``$MEDSAM_RESULTS_ROOT``, else ``results/`` of the repository."""
    env = os.environ.get("MEDSAM_RESULTS_ROOT")
    return Path(env).resolve() if env else REPO_ROOT / "results"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    data_source: str
    model: str
    seed: int
    device: str
    parameters: dict = field(default_factory=dict)  # the notebooks' parameter defaults this profile sets
    root: Path | None = None  # the folder of results folders; None: ``results_root()``

    @property
    def results_dir(self) -> Path:
        return (Path(self.root) if self.root is not None else results_root()) / self.name

    @property
    def layout(self) -> ResultsLayout:
        return ResultsLayout(self.results_dir)

    @property
    def synthetic(self) -> bool:
        return self.data_source == "synthetic"

    @property
    def shared_data_dir(self) -> Path:
        return shared_data_dir()

    @property
    def cohorts_dir(self) -> Path:
        return shared_dir() / "cohorts"

    @property
    def manifest(self) -> str:
        """The data's manifest in ``data_manifests/``."""
        return MANIFESTS[self.data_source]

    @property
    def data_root(self) -> Path:
        """The folder the data set's manifest paths are relative to."""
        return {"synthetic": self.layout.synthetic_data, "shared": self.shared_data_dir,
                "cohorts": self.cohorts_dir}[self.data_source]

    def identity(self) -> dict:
        return {"profile": self.name, **{k: getattr(self, k) for k in IDENTITY}}

    def record_path(self) -> Path:
        return self.results_dir / RECORD

    def claim(self) -> "Profile":
        """Record this profile's settings in its results folder, or refuse a folder that holds another's.

        Raises MedSAMError with the command to use instead; writes ``profile.json`` atomically the
        first time. A folder without a record (written before records existed) is adopted."""
        path = self.record_path()
        mine = self.identity()
        if path.is_file():
            try:
                theirs = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise MedSAMError(f"{shown(path)}: unreadable profile record ({exc}); it says which settings wrote "
                                  f"{shown(self.results_dir)}: remove that folder to start it over") from exc
            if not isinstance(theirs, dict):
                theirs = {}
            changed = [k for k in mine if theirs.get(k) != mine[k]]
            if changed:
                said = ", ".join(f"{k}={quote(theirs.get(k))}" for k in changed)
                now = ", ".join(f"{k}={quote(mine[k])}" for k in changed)
                raise MedSAMError(
                    f"{shown(self.results_dir)} holds results written with {said} ({shown(path)}); profile "
                    f"{self.name!r} now says {now}. One results folder holds one set of settings: put the new settings "
                    f"in a profile of their own (copy medsam_lib/profiles/{self.name}.json to "
                    f"medsam_lib/profiles/NEW.json, change it there, set profile = \"NEW\" or run "
                    f"`python -m medsam_lib run --profile NEW`), or delete {shown(self.results_dir)} to start it over")
            return self
        self.results_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(mine, indent=2) + "\n")
        return self

    def check_data(self) -> "Profile":
        """Refuse, before any work, a profile of real data without its data folder."""
        if not self.synthetic and not self.data_root.is_dir():
            raise MedSAMError(f"profile {self.name!r} needs the real cases at {self.data_root} (data_source "
                              f"{self.data_source!r}); put the shared folder beside the repository or set "
                              f"MEDSAM_SHARED_DIR to the folder that holds {self.data_root.name}/")
        return self

    def describe(self) -> str:
        """One line for a notebook's first output (no absolute path)."""
        data = {"synthetic": "SYNTHETIC phantoms (offline)", "shared": "real cases of ../shared/data",
                "cohorts": "real cohorts of ../shared/cohorts"}[self.data_source]
        return (f"profile {self.name!r}: {data}, model {self.model}, seed {self.seed}, device {self.device}; "
                f"results in {shown(self.results_dir)}")


def load_profile(name: str) -> Profile:
    """The profile ``name`` from ``medsam_lib/profiles/``, checked as data (``profile_check``)."""
    check_profile_name(name, available_profiles())
    path = PROFILES_DIR / f"{name}.json"
    data = check_profile(path, load_profile_file(path), declared_parameters(notebook_paths()))
    return Profile(name=name, description=data.get("description", ""), data_source=data["data_source"],
                   model=data["model"], seed=data["seed"], device=data["device"],
                   parameters=dict(data.get("parameters", {})))


def open_profile(name: str) -> Profile:
    """What a notebook's first cell calls: the profile, its data checked, its results folder claimed."""
    return load_profile(name).check_data().claim()


def fill_options(args, command: str, from_profile, defaults: dict, writes_results: bool = True) -> Profile | None:
    """A command's ``--profile NAME``: its options that the profile decides (``from_profile(profile)``:
    option -> value) are filled in where not given and refused where given otherwise; without
    ``--profile`` the options not given take ``defaults``. A command that writes into the profile's
    results folder claims it (``Profile.claim``). Returns the profile, or None."""
    name = getattr(args, "profile", None)
    profile = None if name is None else open_profile(name) if writes_results else load_profile(name)
    decided = from_profile(profile) if profile is not None else {}
    for option, value in {**defaults, **decided}.items():
        given = getattr(args, option, None)
        if given is None:
            setattr(args, option, value)
        elif option in decided and str(given) != str(value):
            flag = "--" + option.replace("_", "-")
            raise MedSAMError(f"{command} {flag} {quote(str(given))} contradicts --profile {name}, whose {flag} is "
                              f"{quote(str(value))}: drop {flag}, or give the setting its own profile")
    return profile
