"""``data fetch`` against a local HTTP server on 127.0.0.1 serving archives built from ../shared/data."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from medsam_lib.cli import main
from medsam_lib.data.fetch import check_archive, fetch, safe_extract
from medsam_lib.data.manifests import manifest_from_dict
from medsam_lib.fileio import MedSAMError

SOURCE_FILES = ("mr_breast_tumor/breast1_image.nrrd", "mr_breast_tumor/breast1_label.nrrd",
                "us_breast_tumor/images/malignant (1).png", "us_breast_tumor/masks/malignant (1)_mask.png")


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).hits.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    served = tmp_path_factory.mktemp("served")
    handler = functools.partial(_Handler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _tar_gz(path: Path, members: dict[str, bytes], links: dict[str, tuple[str, bytes]] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (target, kind) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
    return path


def _shared_members(shared_data: Path) -> dict[str, bytes]:
    return {f"sample/{rel}": (shared_data / rel).read_bytes() for rel in SOURCE_FILES}


def _manifest(url: str, file_name: str, checksums: dict | None = None, extract: bool = True, **extra) -> object:
    spec = {"url": f"{url}/{file_name}", "file_name": file_name, "extract": extract, **extra}
    if checksums is not None:
        spec["checksums"] = checksums
        spec["checksum_source"] = "computed in the test"
    return manifest_from_dict({
        "schema_version": 1, "name": "served", "description": "archive served by the test",
        "data_root": {"kind": "argument"},
        "obtain": {"method": "direct", "source_url": url, "files": [spec], "checksums_verified": checksums is not None,
                   "layout": ["sample/..."]},
        "datasets": [{"name": "served", "title": "t", "modality": "MR", "dimensionality": "3D", "citation": "c",
                      "license": {"name": "BSD-3-style", "terms": "test"},
                      "images": [{"key": "mr", "modality": "MR"}], "masks": [{"key": "label", "encoding": "label"}],
                      "targets": [{"name": "lesion", "labels": [1]}],
                      "cases": [{"id": "breast1", "images": {"mr": "sample/mr_breast_tumor/breast1_image.nrrd"},
                                 "masks": {"label": "sample/mr_breast_tumor/breast1_label.nrrd"}}]}]})


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")} if root.exists() else set()


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_good_archive_is_fetched_verified_and_unpacked(server, shared_data, tmp_path, kind):
    served, url = server
    members = _shared_members(shared_data)
    name = f"good.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(served / name, "w") as zf:
            for member, data in members.items():
                zf.writestr(member, data)
    else:
        _tar_gz(served / name, members)
    digest = hashlib.sha256((served / name).read_bytes()).hexdigest()
    manifest = _manifest(url, name, {"sha256": digest}, size=(served / name).stat().st_size)
    root = tmp_path / "root"
    fetch(manifest, root=root, progress=False)
    for rel in SOURCE_FILES:
        assert (root / "sample" / rel).read_bytes() == (shared_data / rel).read_bytes()
    stamp = json.loads((root / ".downloads" / f"{name}.done.json").read_text(encoding="utf-8"))
    assert stamp["sha256"] == digest and stamp["verified_against"] == ["sha256"]
    assert not [p for p in root.rglob("*") if ".part" in p.name]
    hits = len(_Handler.hits)
    fetch(manifest, root=root, progress=False)  # rerun: recorded as done, nothing downloaded
    assert len(_Handler.hits) == hits
    from medsam_lib.data.curate import CuratedDataset, curate

    curate(manifest, tmp_path / "curated", root=root, progress=False)  # the fetched files curate as they are
    assert set(CuratedDataset(tmp_path / "curated").index["target"]) == {"lesion"}


def test_checksum_mismatch_saves_nothing(server, shared_data, tmp_path):
    served, url = server
    _tar_gz(served / "tampered.tar.gz", _shared_members(shared_data))
    manifest = _manifest(url, "tampered.tar.gz", {"sha256": "0" * 64})
    root = tmp_path / "root"
    with pytest.raises(MedSAMError, match="sha256 checksum mismatch"):
        fetch(manifest, root=root, progress=False)
    assert _tree(root) <= {".downloads"}  # no archive, no temporary file, nothing extracted


def test_corrupt_archive_extracts_nothing(server, tmp_path):
    served, url = server
    (served / "corrupt.zip").write_bytes(b"PK\x03\x04 this is not really a zip archive" * 10)
    _tar_gz(tmp_path / "whole.tar.gz", {"sample/a.txt": b"x" * 5000})
    (served / "truncated.tar.gz").write_bytes((tmp_path / "whole.tar.gz").read_bytes()[:60])
    for name in ("corrupt.zip", "truncated.tar.gz"):
        root = tmp_path / name
        with pytest.raises(MedSAMError, match="corrupt or truncated archive"):
            fetch(_manifest(url, name), root=root, progress=False)
        assert _tree(root) <= {".downloads"}  # unverifiable and unreadable: not even the download is kept


@pytest.mark.parametrize("entry,message", [
    ("../escaped.txt", "climbs out of the target folder"),
    ("sample/../../escaped.txt", "climbs out of the target folder"),
    ("/tmp/medsam_absolute_escape.txt", "absolute path"),
    ("C:/windows/escape.txt", "absolute path"),
])
def test_entries_escaping_the_target_are_refused(server, tmp_path, entry, message):
    served, url = server
    for kind in ("tar.gz", "zip"):
        name = f"evil_{abs(hash(entry))}.{kind}"
        if kind == "zip":
            with zipfile.ZipFile(served / name, "w") as zf:
                zf.writestr("sample/ok.txt", b"fine")
                zf.writestr(entry, b"evil")
        else:
            _tar_gz(served / name, {"sample/ok.txt": b"fine", entry: b"evil"})
        root = tmp_path / kind / "root"
        with pytest.raises(MedSAMError, match=message):
            fetch(_manifest(url, name, {"sha256": hashlib.sha256((served / name).read_bytes()).hexdigest()}),
                  root=root, progress=False)
        assert not (root / "sample").exists()  # nothing at all was extracted, not even the good member
        assert not (tmp_path / kind / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/medsam_absolute_escape.txt").exists()


@pytest.mark.parametrize("target,kind", [("../../outside", tarfile.SYMTYPE), ("/etc/passwd", tarfile.SYMTYPE),
                                         ("sample/../../outside", tarfile.LNKTYPE)])
def test_links_pointing_outside_are_refused(tmp_path, target, kind):
    archive = _tar_gz(tmp_path / "links.tar.gz", {"sample/ok.txt": b"fine"}, links={"sample/link": (target, kind)})
    with pytest.raises(MedSAMError, match="refusing to extract"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest" / "sample").exists()


def test_zip_symlink_escaping_is_refused_and_inner_links_work(tmp_path):
    def zip_with_link(path: Path, target: str) -> Path:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("sample/ok.txt", b"fine")
            info = zipfile.ZipInfo("sample/link")
            info.external_attr = (0o120777 << 16)  # a symbolic link, target stored as the content
            zf.writestr(info, target)
        return path

    with pytest.raises(MedSAMError, match="points outside the target folder"):
        check_archive(zip_with_link(tmp_path / "bad.zip", "../../../etc/passwd"))
    dest = tmp_path / "dest"
    safe_extract(zip_with_link(tmp_path / "good.zip", "ok.txt"), dest)
    assert (dest / "sample" / "link").is_symlink() and (dest / "sample" / "link").read_bytes() == b"fine"
    inner = _tar_gz(tmp_path / "inner.tar.gz", {"sample/ok.txt": b"fine"}, links={"sample/alias": ("ok.txt", tarfile.SYMTYPE)})
    safe_extract(inner, tmp_path / "dest2")
    assert (tmp_path / "dest2" / "sample" / "alias").read_bytes() == b"fine"


def test_existing_files_are_never_overwritten(tmp_path):
    archive = _tar_gz(tmp_path / "a.tar.gz", {"sample/a.txt": b"new", "sample/b.txt": b"new"})
    dest = tmp_path / "dest"
    (dest / "sample").mkdir(parents=True)
    (dest / "sample" / "a.txt").write_bytes(b"mine")
    with pytest.raises(MedSAMError, match="would overwrite existing file"):
        safe_extract(archive, dest)
    assert (dest / "sample" / "a.txt").read_bytes() == b"mine" and not (dest / "sample" / "b.txt").exists()
    assert [p.name for p in dest.iterdir()] == ["sample"]  # the staging folder is gone


def test_manual_manifests_explain_the_steps(capsys):
    with pytest.raises(MedSAMError, match="(?s)no direct download \\(manual\\).*manual steps:.*BraTS 2018"):
        fetch("brats", progress=False)
    assert main(["data", "fetch", "drive"]) == 2
    err = capsys.readouterr().err
    assert "drive.grand-challenge.org" in err and "expected layout" in err


def test_fetch_cli_end_to_end(server, shared_data, tmp_path, capsys):
    served, url = server
    _tar_gz(served / "cli.tar.gz", _shared_members(shared_data))
    manifest = _manifest(url, "cli.tar.gz", {"md5": hashlib.md5((served / "cli.tar.gz").read_bytes()).hexdigest()})
    path = tmp_path / "served.json"
    path.write_text(json.dumps(manifest.raw))
    assert main(["data", "fetch", str(path), "--root", str(tmp_path / "root")]) == 0
    assert "cli.tar.gz: ok" in capsys.readouterr().out
    assert (tmp_path / "root" / "sample" / SOURCE_FILES[0]).is_file()
    bad = dict(manifest.raw)
    bad["obtain"] = {**bad["obtain"], "files": [{**bad["obtain"]["files"][0], "checksums": {"md5": "f" * 32}}]}
    path.write_text(json.dumps(bad))
    assert main(["data", "fetch", str(path), "--root", str(tmp_path / "root2"), "--force"]) == 2
    assert "md5 checksum mismatch" in capsys.readouterr().err


def test_archive_larger_than_the_free_space_is_refused(tmp_path, monkeypatch):
    import collections
    import shutil as shutil_module

    archive = _tar_gz(tmp_path / "big.tar.gz", {"data/a.bin": b"\0" * 100_000})
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(MedSAMError, match=r"big\.tar\.gz: unpacks to 100000 bytes but only 1000 bytes are free"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
