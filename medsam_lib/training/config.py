"""The training configuration: one TOML or YAML file (or a dict), every field documented and checked.

    cfg = load_config("train.toml")                  # or config_from_dict({...}, source="notebook 04")
    write_config(cfg, out / "config.toml")            # the resolved copy a run keeps

Relative paths (``curated``, ``embeddings``, ``out``, a ``model`` path) are taken relative to the
config file's folder (for a dict: to ``base_dir``, default the current folder). An unknown key, a
value of the wrong type or out of range is refused with a MedSAMError naming the key and the file:
every number must be finite and within its field's range, so a run never starts (nor writes
``config.toml`` or a checkpoint) with a value it would fail on later. A config file is read only if
it is a regular file of at most ``MAX_CONFIG_BYTES``; YAML anchors and aliases are refused (nested
aliases expand exponentially: a few hundred bytes can ask for gigabytes).
``python -m medsam_lib train --help-config`` prints the table below.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .. import paper
from ..data.splits import SEED_MAX
from ..fileio import MedSAMError, atomic_write_text, check_input_path, quote

RECIPES = ("paper", "full")
VALIDATION_SOURCES = ("auto", "index", "carve")
VAL_AVERAGES = ("dataset", "target")
VAL_BOXES = ("tight", "jittered")
BOX_JITTERS = ("paper", "official_code", "none")
RECIPE_DEFAULTS = {  # (optimiser, lr, weight decay)
    "paper": ("adam", paper.LEARNING_RATE, paper.WEIGHT_DECAY),  # 3.2: Adam 1e-5, no weight decay
    "full": ("adamw", 1e-4, 0.01),  # released train_one_gpu.py: AdamW 1e-4, weight decay 0.01
}
_REQUIRED = object()
MAX_CONFIG_BYTES = 1 << 20  # a training config is a few hundred bytes; anything near this is not one
MAX_COUNT = 10**9  # steps, intervals and target counts: far beyond any run, well inside every integer type


@dataclass(frozen=True)
class Field:
    name: str
    kind: type  # str, int, float or bool
    default: object
    doc: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    is_path: bool = False


FIELDS = (
    Field("curated", str, _REQUIRED, "curated store folder (`python -m medsam_lib data curate`); training uses "
          "its train split (and validation split: key validation), never its test split", is_path=True),
    Field("embeddings", str, "", "embedding store of `model` on `curated` (`python -m medsam_lib embed`); needed "
          "by recipe paper, unused by full", is_path=True),
    Field("model", str, "litemedsam", "base model: a zoo name (litemedsam, sam_vit_b, medsam_vit_b) or a "
          "checkpoint path"),
    Field("out", str, _REQUIRED, "run folder: receives last.pt, best.pt, metrics.csv, val_per_dataset.csv, "
          "unfit_targets.csv and config.toml",
          is_path=True),
    Field("recipe", str, "paper", "paper: mask decoder only, from stored embeddings, Adam (paper 2.3/3.2); "
          "full: image encoder + mask decoder from curated images, prompt encoder frozen, AdamW (the released "
          "code's departure from the paper)", choices=RECIPES),
    Field("steps", int, _REQUIRED, "total optimiser steps; a resumed run stops at the same total", minimum=1,
          maximum=MAX_COUNT),
    Field("batch_size", int, paper.BATCH_SIZE, "global batch: (image, one target) pairs per step, split evenly "
          "across distributed ranks", minimum=1, maximum=65536),
    Field("lr", float, -1.0, "learning rate; -1: the recipe's (paper 1e-5, full 1e-4)", minimum=-1.0,
          maximum=1.0),
    Field("weight_decay", float, -1.0, "weight decay; -1: the recipe's (paper 0, full 0.01)", minimum=-1.0,
          maximum=1.0),
    Field("seed", int, 0, "seeds the validation carve and sample, the sampler order, the box jitter "
          "and the jittered validation boxes",
          minimum=0, maximum=SEED_MAX),
    Field("checkpoint_every", int, 100, "write last.pt every this many steps (and at the end)", minimum=1,
          maximum=MAX_COUNT),
    Field("val_every", int, 0, "validate (and maybe write best.pt) every this many steps; 0: with each "
          "checkpoint", minimum=0, maximum=MAX_COUNT),
    Field("validation", str, "auto", "where validation targets come from: index: the curated index's "
          "`validation` split (every `train` row trains; `test` is never read); carve: held out of the train "
          "split by case (val_fraction); auto: index when the curated store has validation rows, else carve",
          choices=VALIDATION_SOURCES),
    Field("val_fraction", float, 0.2, "validation carve: fraction of each data set's train cases held out for "
          "validation (by case, seeded; at least one case when a data set has two or more)", minimum=0.0,
          maximum=0.9),
    Field("val_max_targets", int, 0, "validate on at most this many targets, sampled per data set (seeded; at "
          "most ceil(val_max_targets / data sets) from each, so no data set dominates); 0: all",
          minimum=0, maximum=MAX_COUNT),
    Field("val_average", str, "dataset", "validation Dice (and best.pt's choice): dataset: the mean over data sets "
          "of each data set's mean target Dice; target: the mean over all targets (one large data set "
          "dominates)", choices=VAL_AVERAGES),
    Field("val_boxes", str, "tight", "validation boxes: tight: the ground-truth box (the paper's test "
          "protocol); jittered: each side moved outwards by a seeded 0-19 px at 256 (the v1 tutorial's test "
          "boxes), fixed per target by (seed, index row)", choices=VAL_BOXES),
    Field("box_jitter", str, "paper", "training boxes: paper: each box side moved outwards by a random 0-20 px "
          "at 256 (paper 3.2); official_code: 0-19 px (v1 train.py, np.random.randint(0, 20)); none: the "
          "ground-truth box (0 px)", choices=BOX_JITTERS),
    Field("exclude_unfit", bool, False, "leave out training targets unfit for a box prompt: a box covering >= "
          "95% of the image, or a target filling < 20% of its box (training.data.unfit_reasons); the counts "
          "go to unfit_targets.csv. false: the paper's (every target trains)"),
    Field("datasets", str, "", "comma-separated data set names to train and validate on (e.g. one decoder per "
          "task); empty: every data set of the curated store"),
    Field("device", str, "auto", "auto (CUDA when present), cpu, cuda or cuda:N; under torchrun each rank "
          "takes cuda:LOCAL_RANK"),
    Field("precision", str, "auto", "auto: bfloat16 autocast on CUDA, float32 on CPU; bf16; fp32",
          choices=("auto", "bf16", "fp32")),
    Field("activation_checkpointing", bool, False, "recipe full with ViT-B: recompute each encoder block in "
          "the backward pass (less memory, ~30% more time)"),
)
_BY_NAME = {f.name: f for f in FIELDS}
# Fields that make a run what it is: --resume refuses a checkpoint whose values differ.
IDENTITY = ("curated", "embeddings", "model", "recipe", "batch_size", "lr", "weight_decay", "seed",
            "validation", "val_fraction", "val_max_targets", "val_average", "val_boxes", "box_jitter",
            "exclude_unfit", "datasets", "precision", "activation_checkpointing")
# What a run saved before a field existed did: a last.pt without the key is compared with this value.
IDENTITY_BEFORE = {"validation": "carve", "val_average": "target", "val_boxes": "tight", "exclude_unfit": False,
                   "datasets": ""}


@dataclass(frozen=True)
class TrainConfig:
    curated: str
    embeddings: str
    model: str
    out: str
    recipe: str
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    checkpoint_every: int
    val_every: int
    validation: str
    val_fraction: float
    val_max_targets: int
    val_average: str
    val_boxes: str
    box_jitter: str
    exclude_unfit: bool
    datasets: str
    device: str
    precision: str
    activation_checkpointing: bool
    source: str = "<dict>"  # where the values came from (for error messages)

    @property
    def optimizer(self) -> str:
        return RECIPE_DEFAULTS[self.recipe][0]

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in FIELDS}

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in IDENTITY}

    @property
    def dataset_names(self) -> list[str]:
        """``datasets`` as a list (empty: every data set)."""
        return parse_datasets(self.datasets)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def parse_datasets(text: str) -> list[str]:
    """The names of a ``datasets`` value: comma-separated, blanks around names ignored, order kept."""
    return list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))


def _number(bound) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _check(field: Field, value, source: str):
    where = f"{source}: key {field.name!r}"
    kind = field.kind
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        hint = ""
        if kind is float and isinstance(value, str):
            hint = " (YAML 1.1 reads 1e-5 as text: write 1.0e-5)"
        raise MedSAMError(f"{where} must be {kind.__name__}, got {type(value).__name__} {quote(value)}{hint}")
    if kind is float and not math.isfinite(value):
        raise MedSAMError(f"{where} must be a finite number, got {quote(value)}")
    if field.choices and value not in field.choices:
        raise MedSAMError(f"{where} must be one of {', '.join(field.choices)}, got {quote(value)}")
    if field.minimum is not None and value < field.minimum:
        raise MedSAMError(f"{where} must be >= {_number(field.minimum)}, got {quote(value)}")
    if field.maximum is not None and value > field.maximum:
        raise MedSAMError(f"{where} must be <= {_number(field.maximum)}, got {quote(value)}")
    if kind is str and field.name == "device" and not (value in ("auto", "cpu", "cuda") or value.startswith("cuda:")):
        raise MedSAMError(f"{where} must be auto, cpu, cuda or cuda:N, got {quote(value)}")
    return value


def _resolve_path(value: str, base: Path) -> str:
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path))


def config_from_dict(values: dict, source: str = "<dict>", base_dir: str | os.PathLike | None = None) -> TrainConfig:
    """Check every key and value, fill the defaults, resolve relative paths against ``base_dir``."""
    from ..models.zoo import MODELS

    if not isinstance(values, dict):
        raise MedSAMError(f"{source}: a training config is a table of keys, got {type(values).__name__}")
    unknown = sorted(set(values) - set(_BY_NAME))
    if unknown:
        others = unknown[1:]  # a few are named, many are counted (the line stays short)
        more = (f" (and {', '.join(quote(k) for k in others)})" if len(others) <= 4 else f" (and {len(others)} more)"
                ) if others else ""
        raise MedSAMError(f"{source}: unknown key {quote(unknown[0])}" + more
                          + f"; known keys: {', '.join(_BY_NAME)}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    out = {}
    for field in FIELDS:
        if field.name not in values:
            if field.default is _REQUIRED:
                raise MedSAMError(f"{source}: key {field.name!r} is required ({field.doc})")
            value = field.default
        else:
            value = _check(field, values[field.name], source)
        if field.is_path:
            value = _resolve_path(value, base)
        out[field.name] = value
    if out["model"] not in MODELS:
        out["model"] = _resolve_path(out["model"], base)
    _, lr, wd = RECIPE_DEFAULTS[out["recipe"]]
    out["lr"] = lr if out["lr"] == -1.0 else out["lr"]
    out["weight_decay"] = wd if out["weight_decay"] == -1.0 else out["weight_decay"]
    if out["lr"] <= 0:
        raise MedSAMError(f"{source}: key 'lr' must be > 0 (or -1 for the recipe's), got {quote(out['lr'])}")
    if out["weight_decay"] < 0:
        raise MedSAMError(f"{source}: key 'weight_decay' must be >= 0 (or -1 for the recipe's)")
    if out["recipe"] == "paper" and not out["embeddings"]:
        raise MedSAMError(f"{source}: recipe 'paper' trains from stored embeddings: set key 'embeddings' to the "
                          "embedding store of `model` on `curated` (`python -m medsam_lib embed`)")
    if out["activation_checkpointing"] and out["recipe"] != "full":
        raise MedSAMError(f"{source}: key 'activation_checkpointing' applies to recipe 'full' only")
    if out["datasets"].strip() and not parse_datasets(out["datasets"]):
        raise MedSAMError(f"{source}: key 'datasets' must name data sets separated by commas, got "
                          f"{quote(out['datasets'])}")
    out["datasets"] = ",".join(parse_datasets(out["datasets"]))
    if out["val_every"] == 0:
        out["val_every"] = out["checkpoint_every"]
    return TrainConfig(**out, source=source)


class _RefusedAlias(Exception):
    def __init__(self, kind: str, mark):
        super().__init__(f"YAML {kind} at line {mark.line + 1}: anchors and aliases are not accepted in a config "
                         "(write each value out)")


def _yaml_load(text: str):
    """``yaml.safe_load`` that refuses anchors and aliases (the one YAML reader of configs)."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise _RefusedAlias("alias", event.start_mark)
            if getattr(event, "anchor", None) is not None:
                raise _RefusedAlias("anchor", event.start_mark)
            return super().compose_node(parent, index)

    loader = NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a ``.toml`` or ``.yaml``/``.yml`` config file (a regular file of at most
    ``MAX_CONFIG_BYTES``; YAML without anchors or aliases) and check it."""
    path = Path(path)
    if not os.path.lexists(path):
        raise MedSAMError(f"{path}: config file not found")
    check_input_path(path, "config file", allow_dir=False)  # a named pipe is refused, not read forever
    if path.suffix.lower() not in (".toml", ".yaml", ".yml"):
        raise MedSAMError(f"{path}: config must be .toml, .yaml or .yml")
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise MedSAMError(f"{path}: config file larger than {MAX_CONFIG_BYTES // 1024} KiB; a training config is a "
                          "short table of keys")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MedSAMError(f"{path}: not a text file (byte {exc.start} is not UTF-8); a config is TOML or YAML "
                          "text") from None
    kind = "TOML" if path.suffix.lower() == ".toml" else "YAML"
    try:
        if kind == "TOML":
            import tomllib

            values = tomllib.loads(text)
        else:
            values = _yaml_load(text) or {}
    except _RefusedAlias as exc:
        raise MedSAMError(f"{path}: {exc}") from None
    except RecursionError:
        raise MedSAMError(f"{path}: not valid {kind} (nested too deeply)") from None
    except Exception as exc:  # noqa: BLE001 - tomllib / yaml syntax errors name the line
        detail = " ".join(str(exc).split())  # yaml's messages span lines: one error line
        raise MedSAMError(f"{path}: not valid {kind} ({detail[:300]})") from exc
    return config_from_dict(values, source=str(path), base_dir=path.parent.resolve())


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """The resolved config as TOML (every field, defaults filled, paths absolute), written atomically."""
    lines = [f"# resolved training config (from {cfg.source})"]
    for field in FIELDS:
        lines.append(f"# {field.doc}")
        lines.append(f"{field.name} = {_toml_value(getattr(cfg, field.name))}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def describe_fields() -> str:
    """Every field, its type, default and meaning (the CLI's --help-config)."""
    rows = []
    for f in FIELDS:
        default = "(required)" if f.default is _REQUIRED else repr(f.default)
        rows.append(f"{f.name} ({f.kind.__name__}, default {default}): {f.doc}")
    return "\n".join(rows)
