"""``data fetch``: download a manifest's direct-download files and unpack them safely.

For every file of a ``direct`` manifest: download with ``download.fetch_url`` (progress bar,
size/checksum verification where the manifest has them, atomic rename) into
``<root>/.downloads/``, then, for archives, extract into ``<root>/<extract_to>``:
- every member is checked *before* anything is written: absolute paths, ``..`` components,
  drive letters, device files and links (symbolic or hard) whose target lies outside the
  destination are refused, and so is an entry that would land on top of an existing file;
- members are extracted into a temporary folder beside the destination, which is moved into
  place only when the whole archive unpacked cleanly (a corrupt archive leaves nothing);
- a stamp ``<root>/.downloads/<file>.done.json`` records the archive's SHA-256, so a rerun skips
  finished files;
- a refused archive (an unsafe entry, or corrupt without a checksum to trust it by) is deleted,
  and a failed fetch leaves no empty ``.downloads`` folder (nor a data root it created) behind.
Without a published checksum the download is accepted as it comes and its SHA-256 is printed and
recorded, so a later fetch can be compared (``checksums_verified: false`` in the manifest says so).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..download import fetch_url, verify_file
from ..fileio import MedSAMError, atomic_write_text, make_folder, sha256_file
from .manifests import FileSpec, Manifest, load_manifest, resolve_root

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _archive_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if any(name.endswith(s) for s in ARCHIVE_SUFFIXES):
        return "tar"
    raise MedSAMError(f"{path}: cannot extract {path.name}: supported archives are {', '.join(ARCHIVE_SUFFIXES)} "
                      "(unpack it by hand, as the manifest's manual steps say)")


def _safe_member_path(name: str, archive: Path) -> PurePosixPath:
    """The member's path relative to the destination; MedSAMError if it could escape it."""
    if "\x00" in name:
        raise MedSAMError(f"{archive}: entry {name!r} has a NUL byte in its name; refusing to extract")
    posix = name.replace("\\", "/")
    pure = PurePosixPath(posix)
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise MedSAMError(f"{archive}: entry {name!r} has an absolute path; refusing to extract the archive")
    if ".." in pure.parts:
        raise MedSAMError(f"{archive}: entry {name!r} climbs out of the target folder ('..'); refusing to extract")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        return PurePosixPath(".")
    return PurePosixPath(*parts)


def _link_stays_inside(member_path: PurePosixPath, target: str, archive: Path, name: str) -> None:
    target_posix = target.replace("\\", "/")
    if target_posix.startswith("/") or (len(target_posix) > 1 and target_posix[1] == ":"):
        raise MedSAMError(f"{archive}: link {name!r} points to the absolute path {target!r}; refusing to extract")
    depth = len(member_path.parent.parts)
    for part in PurePosixPath(target_posix).parts:
        depth = depth - 1 if part == ".." else depth if part in ("", ".") else depth + 1
        if depth < 0:
            raise MedSAMError(f"{archive}: link {name!r} -> {target!r} points outside the target folder; "
                              "refusing to extract")


def check_archive(archive: str | os.PathLike) -> list[str]:
    """List an archive's members after checking every one is safe; MedSAMError otherwise (or if corrupt)."""
    archive = Path(archive)
    names, total = [], 0
    try:
        if _archive_kind(archive) == "zip":
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    member = _safe_member_path(info.filename, archive)
                    mode = info.external_attr >> 16
                    total += info.file_size
                    if stat.S_ISLNK(mode):
                        _link_stays_inside(member, zf.read(info).decode("utf-8", "replace"), archive, info.filename)
                    names.append(str(member))
        else:
            with tarfile.open(archive) as tf:
                for info in tf.getmembers():
                    member = _safe_member_path(info.name, archive)
                    total += info.size
                    if info.isdev() or info.isfifo():
                        raise MedSAMError(f"{archive}: entry {info.name!r} is a device or FIFO; refusing to extract")
                    if info.issym():
                        _link_stays_inside(member, info.linkname, archive, info.name)
                    if info.islnk():  # hard link: its target names another member, checked like one
                        _safe_member_path(info.linkname, archive)
                    names.append(str(member))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise MedSAMError(f"{archive}: corrupt or truncated archive ({exc}); delete it and fetch again") from exc
    free = shutil.disk_usage(archive.parent).free
    if total > free:
        raise MedSAMError(f"{archive}: unpacks to {total} bytes but only {free} bytes are free; refusing to extract "
                          "(free space, or is this an archive bomb?)")
    return names


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Extract ``archive`` into ``dest`` after ``check_archive``; all or nothing. Returns the member names.

    Existing files in ``dest`` are never overwritten: a member that would land on one is an error
    (raised before anything is moved).
    """
    archive, dest = Path(archive), Path(dest)
    names = check_archive(archive)
    created = not dest.exists()
    make_folder(dest, "folder to extract into")
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".part", dir=dest))
    ok = False
    try:
        try:
            if _archive_kind(archive) == "zip":
                with zipfile.ZipFile(archive) as zf:
                    for info in zf.infolist():
                        member = _safe_member_path(info.filename, archive)
                        if stat.S_ISLNK(info.external_attr >> 16):
                            target_path = staging / member
                            target_path.parent.mkdir(parents=True, exist_ok=True)
                            os.symlink(zf.read(info).decode(), target_path)
                        else:
                            zf.extract(info, staging)
            else:
                with tarfile.open(archive) as tf:
                    tf.extractall(staging, filter="data")  # a second line of defence after check_archive
        except tarfile.FilterError as exc:
            raise MedSAMError(f"{archive}: unsafe entry ({exc}); refusing to extract") from exc
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise MedSAMError(f"{archive}: corrupt or truncated archive ({exc}); delete it and fetch again") from exc
        tops = sorted({p.name for p in staging.iterdir()})
        clashes = [t for t in tops if (dest / t).exists() and not (dest / t).is_dir()]
        clashes += [str(p.relative_to(staging)) for t in tops if (dest / t).is_dir()
                    for p in (staging / t).rglob("*") if not p.is_dir() and (dest / p.relative_to(staging)).exists()]
        if clashes:
            raise MedSAMError(f"{archive}: would overwrite existing file(s) in {dest}: {clashes[:5]}; "
                              "move them aside or extract into an empty folder")
        for top in tops:
            _merge(staging / top, dest / top)
        ok = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not ok:
            _remove_if_empty(dest)
    return names


def _merge(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``; folders are merged (the caller checked that no file is overwritten)."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir():
        for child in src.iterdir():
            _merge(child, dst / child.name)
    else:
        os.replace(src, dst)


def _stamp_path(root: Path, spec: FileSpec) -> Path:
    return root / ".downloads" / f"{spec.file_name}.done.json"


def fetch_file(spec: FileSpec, root: Path, force: bool = False, progress: bool = True) -> str:
    """Download (and unpack) one file of a manifest into ``root``; returns its SHA-256."""
    downloads = root / ".downloads"
    make_folder(downloads, "downloads folder")
    archive = downloads / spec.file_name
    stamp = _stamp_path(root, spec)
    if stamp.is_file() and not force:
        try:
            return str(json.loads(stamp.read_bytes().decode("utf-8"))["sha256"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise MedSAMError(f"{stamp}: damaged record of a finished fetch; delete it (and the files unpacked "
                              f"from {spec.file_name}, if any) and fetch again") from exc
    if force or not archive.is_file():
        fetch_url(spec.url, archive, spec.checksums, spec.size, progress=progress)
    else:  # a download that finished earlier but was not unpacked: verify before use
        verify_file(archive, spec.checksums, spec.size, name=str(archive))
    if spec.extract:
        try:
            safe_extract(archive, root / spec.extract_to if spec.extract_to else root)
        except MedSAMError as exc:
            unsafe = "refusing to extract" in str(exc) or "unsafe entry" in str(exc)
            if unsafe or ("corrupt or truncated" in str(exc) and not spec.checksums):
                archive.unlink(missing_ok=True)  # refused, or unverifiable and unreadable: do not keep it around
            raise
    elif spec.extract_to:
        target = root / spec.extract_to / spec.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(archive, target)
    digest = sha256_file(archive)
    atomic_write_text(stamp, json.dumps({"url": spec.url, "file_name": spec.file_name, "sha256": digest,
                                         "size": archive.stat().st_size,
                                         "verified_against": sorted(spec.checksums)}, indent=2))
    return digest


def fetch(manifest: Manifest | str | os.PathLike, root: str | os.PathLike | None = None, force: bool = False,
          progress: bool = True) -> Path:
    """Fetch every file of a ``direct`` manifest; MedSAMError with the manual steps otherwise."""
    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    method = manifest.obtain["method"]
    if method != "direct":
        steps = "\n  ".join(manifest.obtain.get("manual_steps", []))
        layout = "\n  ".join(manifest.obtain.get("layout", []))
        raise MedSAMError(f"{manifest.name}: no direct download ({method}); source: {manifest.obtain['source_url']}"
                          + (f"\nmanual steps:\n  {steps}" if steps else "")
                          + (f"\nexpected layout under the data root:\n  {layout}" if layout else ""))
    root = resolve_root(manifest, root)
    if root.exists() and not root.is_dir():
        raise MedSAMError(f"data root {root}: a file is in the way; give a folder (--root)")
    created = not root.exists()
    make_folder(root, "data root")
    try:
        for spec in manifest.files:
            digest = fetch_file(spec, root, force=force, progress=progress)
            checked = ", ".join(sorted(spec.checksums)) or "no published checksum"
            print(f"{spec.file_name}: ok (sha256 {digest}; verified against: {checked})")
    except BaseException:
        _remove_if_empty(root / ".downloads")
        if created:
            _remove_if_empty(root)
        raise
    return root


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only succeeds on an empty folder
    except OSError:
        pass
