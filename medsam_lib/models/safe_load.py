"""The one way a checkpoint file is opened: ``torch.load(weights_only=True)`` with every failure as a
MedSAMError naming the file and the problem (used by ``zoo.load_state_dict`` for model weights and
by ``finetuned.read_checkpoint`` for ``best.pt`` / ``last.pt``), and the one rule for the weights read
(``check_finite_weights``).

- a folder, a missing file, a named pipe or device, an empty file: said so before torch opens it;
- pickled code (a global the weights-only unpickler refuses): the global is named, nothing is run;
- a truncated zip, junk, text or an HTML error page saved as a checkpoint: said so.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from ..fileio import MedSAMError, check_input_path


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint"):
    """The object in ``path``, read with ``torch.load(weights_only=True)`` on the CPU."""
    path = Path(path)
    if path.is_dir():
        raise MedSAMError(f"{what} {path} is a folder; give the path of the .pth file inside it")
    if not os.path.lexists(path):
        raise MedSAMError(f"{what} {path} does not exist")
    check_input_path(path, what, allow_dir=False)  # a pipe or device is refused before torch opens it
    if path.stat().st_size == 0:
        raise MedSAMError(f"{what} {path} is empty (0 bytes); delete it and fetch or copy it again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Detected pickle protocol": the error says it
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc)) or _pickled_code(path)
        if refused:
            raise MedSAMError(
                f"{what} {path} is not a plain state dict: it holds pickled Python code that calls "
                f"{refused}; loading it would run that code, so torch.load(weights_only=True) blocks it. If you "
                "trust the file, re-save only its weights with torch.save(model.state_dict(), path)") from exc
        raise MedSAMError(f"{what} {path} is corrupted or not a PyTorch checkpoint "
                          f"({_describe_unreadable(path)}); fetch or copy it again") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        detail = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise MedSAMError(f"{what} {path} is truncated or not a PyTorch file ({detail[:200]}); "
                          "fetch or copy it again") from exc
    except Exception as exc:  # noqa: BLE001 - the unpickler fails in many ways on text and junk (IndexError, KeyError)
        raise MedSAMError(f"{what} {path} is not a PyTorch checkpoint ({_describe_unreadable(path)}); "
                          "give the .pth file of a model") from exc


def check_finite_weights(state: Mapping[str, torch.Tensor], source) -> None:
    """The one rule for weights: every floating-point tensor is finite. A NaN weight gives NaN logits,
    an empty mask and a NaN score, silently; refused at load (model files and fine-tuned weights)."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise MedSAMError(f"checkpoint {source}: weight {key!r} holds {bad} NaN or infinite value(s); "
                              "the file is broken (a diverged training run?): use another checkpoint")


def _describe_unreadable(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(64)
    if head.lstrip()[:1] in (b"<", b"{"):
        return "it starts like a text/HTML page, e.g. an error page saved by a failed download"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"it is a text file, first bytes {head[:8]!r}"
    return f"unreadable pickle data, first bytes {head[:8]!r}"


def _refused_global(message: str) -> str | None:
    """The global torch's weights-only unpickler names when it refuses one (its wording varies)."""
    match = (re.search(r"Unsupported global: GLOBAL (\S+)", message)
             or re.search(r"unsupported GLOBAL (\S+)", message))
    return match.group(1) if match else None


def _pickled_code(path: Path) -> str | None:
    """The first global a raw pickle file imports (``module.name``), read with ``pickletools`` (which
    only parses opcodes: nothing is imported or run); None if the file is not a pickle that imports
    anything outside torch's own rebuild helpers."""
    import pickletools

    try:
        with path.open("rb") as handle:
            data = handle.read(1 << 20)
        if data[:2] == b"PK":
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return None
                data = archive.read(member)
        strings, memo = [], {}
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING",
                        "BINSTRING", "STRING"):
                strings.append(str(arg))
            elif name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                strings.append(memo[arg])
            found = None
            if name in ("GLOBAL", "INST"):
                found = str(arg).replace(" ", ".")
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                found = f"{strings[-2]}.{strings[-1]}"
            if found and not found.startswith(("torch.", "collections.OrderedDict", "_codecs.encode")):
                return found
    except Exception:  # noqa: BLE001 - not a readable pickle: the caller says so
        return None
    return None


