"""Downloads: a local HTTP server on 127.0.0.1 serves good, corrupted, truncated and missing files.

Nothing here reaches the internet: ``sam_vit_b``'s URL and hashes are pointed at the local
server with dataclasses.replace for the end-to-end fetch and CLI tests.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import xxhash

from medsam_lib.download import fetch_url, verify_file
from medsam_lib.fileio import MedSAMError
from medsam_lib.models import zoo

PAYLOAD = random.Random(0).randbytes(2_500_000)  # more than two of fetch_url's 1 MiB blocks
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
PAYLOAD_XXH128 = xxhash.xxh128(PAYLOAD).hexdigest()
CORRUPTED = PAYLOAD[:1000] + bytes([PAYLOAD[1000] ^ 0xFF]) + PAYLOAD[1001:]  # same size, one byte off


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.hits[self.path] += 1
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        mode, body = route
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        if mode == "chunked_broken":  # chunked transfer that stops mid-stream
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = body[: len(body) // 2]
            self.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
            self.wfile.flush()
            return
        if mode == "stall":
            time.sleep(1.5)
        # "truncated" announces the whole body but sends 60 % of it, then closes the connection.
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if mode in ("ok", "stall") else body[: len(body) * 3 // 5])
        self.wfile.flush()

    def log_message(self, *args):  # keep pytest output clean
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that gave up (timeout test)
        pass


@pytest.fixture(scope="module")
def _server():
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    server.routes, server.hits = {}, collections.Counter()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class Server:
    def __init__(self, server):
        self._server = server
        self.base = f"http://127.0.0.1:{server.server_address[1]}"

    def serve(self, path: str, body: bytes, mode: str = "ok") -> str:
        self._server.routes[path] = (mode, body)
        return self.base + path

    def hits(self, path: str) -> int:
        return self._server.hits[path]


@pytest.fixture
def http(_server) -> Server:
    _server.routes.clear()
    _server.hits.clear()
    return Server(_server)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- fetch_url -----------------------------------------------------------------------------------

def test_good_download_with_progress(http, tmp_path, capsys):
    url = http.serve("/weights.pth", PAYLOAD)
    dest = tmp_path / "sub" / "weights.pth"
    assert fetch_url(url, dest, {"sha256": PAYLOAD_SHA256, "xxh128": PAYLOAD_XXH128}, len(PAYLOAD)) == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == ["weights.pth"]
    assert "weights.pth" in capsys.readouterr().err  # the progress bar names the file
    assert http.hits("/weights.pth") == 1


def test_corrupted_download_leaves_nothing(http, tmp_path):
    url = http.serve("/weights.pth", CORRUPTED)
    dest = tmp_path / "weights.pth"
    with pytest.raises(MedSAMError, match="sha256 checksum mismatch") as err:
        fetch_url(url, dest, {"sha256": PAYLOAD_SHA256}, len(PAYLOAD), progress=False)
    assert str(dest) in str(err.value) and url in str(err.value)
    assert hashlib.sha256(CORRUPTED).hexdigest() in str(err.value)
    assert leftovers(tmp_path) == []


def test_corrupted_download_keeps_an_existing_good_file(http, tmp_path):
    dest = tmp_path / "weights.pth"
    dest.write_bytes(PAYLOAD)
    before = dest.stat()
    url = http.serve("/weights.pth", CORRUPTED)
    with pytest.raises(MedSAMError, match="checksum mismatch"):
        fetch_url(url, dest, {"sha256": PAYLOAD_SHA256}, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert (dest.stat().st_mtime_ns, dest.stat().st_ino) == (before.st_mtime_ns, before.st_ino)
    assert leftovers(tmp_path) == ["weights.pth"]


@pytest.mark.parametrize("with_checks", [True, False])
def test_truncated_transfer(http, tmp_path, with_checks):
    """The server announces the full length, sends 60 % and closes: even with no hash to check, refused."""
    url = http.serve("/weights.pth", PAYLOAD, mode="truncated")
    dest = tmp_path / "weights.pth"
    hashes, size = ({"sha256": PAYLOAD_SHA256}, len(PAYLOAD)) if with_checks else (None, None)
    with pytest.raises(MedSAMError) as err:
        fetch_url(url, dest, hashes, size, progress=False)
    message = str(err.value)
    assert "truncated" in message and f"{len(PAYLOAD) * 3 // 5} of {len(PAYLOAD)} bytes" in message
    assert url in message
    assert leftovers(tmp_path) == []  # no dest, no .part file


def test_truncated_transfer_keeps_an_existing_good_file(http, tmp_path):
    dest = tmp_path / "weights.pth"
    dest.write_bytes(PAYLOAD)
    url = http.serve("/weights.pth", PAYLOAD, mode="truncated")
    with pytest.raises(MedSAMError, match="truncated"):
        fetch_url(url, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD and leftovers(tmp_path) == ["weights.pth"]


def test_broken_chunked_transfer(http, tmp_path):
    url = http.serve("/weights.pth", PAYLOAD, mode="chunked_broken")
    dest = tmp_path / "weights.pth"
    with pytest.raises(MedSAMError) as err:
        fetch_url(url, dest, {"sha256": PAYLOAD_SHA256}, progress=False)
    assert url in str(err.value)
    assert leftovers(tmp_path) == []


def test_http_404(http, tmp_path):
    url = http.base + "/missing.pth"
    dest = tmp_path / "missing.pth"
    with pytest.raises(MedSAMError, match="HTTP 404") as err:
        fetch_url(url, dest, progress=False)
    assert url in str(err.value) and "nothing was saved" in str(err.value)
    assert leftovers(tmp_path) == []


def test_connection_refused_and_timeout(http, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MedSAMError, match=f"127.0.0.1:{port}"):
        fetch_url(f"http://127.0.0.1:{port}/w.pth", tmp_path / "w.pth", progress=False, timeout=5)
    url = http.serve("/slow.pth", PAYLOAD, mode="stall")
    with pytest.raises(MedSAMError, match="timed out"):
        fetch_url(url, tmp_path / "slow.pth", progress=False, timeout=0.3)
    assert leftovers(tmp_path) == []


# --- verify_file ---------------------------------------------------------------------------------

def test_verify_file_enforces_prefix_and_xxh128(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    sha, md5 = PAYLOAD_SHA256, hashlib.md5(PAYLOAD).hexdigest()
    verify_file(path, {"sha256_prefix": sha[:6], "xxh128": PAYLOAD_XXH128}, len(PAYLOAD))
    verify_file(path, {"md5_prefix": md5[:6].upper(), "sha256": sha.upper()})  # hex digests: any case

    wrong_prefix = f"{(int(sha[:6], 16) ^ 1):06x}"
    with pytest.raises(MedSAMError, match=f"sha256 checksum mismatch \\(expected {wrong_prefix}") as err:
        verify_file(path, {"sha256_prefix": wrong_prefix, "xxh128": PAYLOAD_XXH128})
    assert str(path) in str(err.value)
    wrong_xxh = PAYLOAD_XXH128[:-1] + ("0" if PAYLOAD_XXH128[-1] != "0" else "1")
    with pytest.raises(MedSAMError, match=f"xxh128 checksum mismatch .*got {PAYLOAD_XXH128}"):
        verify_file(path, {"sha256_prefix": sha[:6], "xxh128": wrong_xxh})
    with pytest.raises(MedSAMError, match="checksum mismatch"):
        verify_file(path, {"sha256_prefix": ""})  # an empty prefix proves nothing
    with pytest.raises(MedSAMError, match=f"size {len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"):
        verify_file(path, {}, len(PAYLOAD) + 1)
    with pytest.raises(MedSAMError, match="unknown checksum algorithm 'sha257'"):
        verify_file(path, {"sha257": "00"})
    with pytest.raises(MedSAMError, match="not found"):
        verify_file(tmp_path / "absent.bin", {"sha256": sha})


def test_sam_vit_b_recorded_hashes_are_enforced(tmp_path):
    """A file of the official size that is not Meta's fails sam_vit_b's recorded sha256 and xxh128."""
    spec = zoo.MODELS["sam_vit_b"]
    assert spec.hashes == {"sha256": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
                           "xxh128": "6923c33df3637b6a922d7682bfc9a86b"}
    path = tmp_path / spec.filename
    with open(path, "wb") as handle:
        handle.truncate(spec.size)  # sparse: the official size, none of its content
    with pytest.raises(MedSAMError, match="sha256 checksum mismatch"):
        verify_file(path, spec.hashes, spec.size)
    with pytest.raises(MedSAMError, match="xxh128 checksum mismatch .*expected 6923c33df3637b6a922d7682bfc9a86b"):
        verify_file(path, {"xxh128": spec.hashes["xxh128"]}, spec.size)


# --- fetch_weights and the CLI ---------------------------------------------------------------------

@pytest.fixture
def local_sam_vit_b(http, tmp_path, monkeypatch):
    """sam_vit_b pointed at the local server (good payload), with MEDSAM_CACHE_DIR in tmp."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(cache))
    url = http.serve("/segment_anything/sam_vit_b_01ec64.pth", PAYLOAD)
    spec = dataclasses.replace(zoo.MODELS["sam_vit_b"], url=url, size=len(PAYLOAD),
                               hashes={"sha256": PAYLOAD_SHA256, "xxh128": PAYLOAD_XXH128})
    monkeypatch.setitem(zoo.MODELS, "sam_vit_b", spec)
    return cache, spec


def test_fetch_weights_sam_vit_b_end_to_end(http, local_sam_vit_b):
    cache, spec = local_sam_vit_b
    route = "/segment_anything/sam_vit_b_01ec64.pth"
    path = zoo.fetch_weights("sam_vit_b", progress=False)
    assert path == cache / "sam_vit_b_01ec64.pth" and path.read_bytes() == PAYLOAD
    assert zoo.weights_path("sam_vit_b") == path
    assert http.hits(route) == 1

    assert zoo.fetch_weights("sam_vit_b", progress=False) == path  # verified file kept
    assert http.hits(route) == 1
    zoo.fetch_weights("sam_vit_b", force=True, progress=False)
    assert http.hits(route) == 2 and path.read_bytes() == PAYLOAD

    path.write_bytes(CORRUPTED)  # damaged in place: an explicit fetch replaces it
    zoo.fetch_weights("sam_vit_b", progress=False)
    assert http.hits(route) == 3 and path.read_bytes() == PAYLOAD
    assert leftovers(cache) == ["sam_vit_b_01ec64.pth"]


def test_fetch_weights_mismatch_keeps_the_good_file(http, local_sam_vit_b):
    cache, spec = local_sam_vit_b
    good = zoo.fetch_weights("sam_vit_b", progress=False)
    http.serve("/segment_anything/sam_vit_b_01ec64.pth", CORRUPTED)
    with pytest.raises(MedSAMError, match="sha256 checksum mismatch"):
        zoo.fetch_weights("sam_vit_b", force=True, progress=False)
    assert good.read_bytes() == PAYLOAD and leftovers(cache) == ["sam_vit_b_01ec64.pth"]


def test_fetch_weights_never_downloads_the_bundled_model(monkeypatch):
    monkeypatch.setattr(zoo, "fetch_url", lambda *a, **k: pytest.fail("litemedsam must not be downloaded"))
    assert zoo.fetch_weights("litemedsam") == zoo.bundled_lite_checkpoint()


def test_cli_weights_fetch(http, local_sam_vit_b, capsys):
    from medsam_lib.cli import main

    cache, spec = local_sam_vit_b
    assert main(["weights", "fetch", "sam_vit_b"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"sam_vit_b: {cache / 'sam_vit_b_01ec64.pth'} (verified)"
    assert (cache / "sam_vit_b_01ec64.pth").read_bytes() == PAYLOAD


def test_cli_weights_fetch_hash_mismatch(http, local_sam_vit_b, capsys):
    from medsam_lib.cli import main

    cache, spec = local_sam_vit_b
    http.serve("/segment_anything/sam_vit_b_01ec64.pth", CORRUPTED)
    assert main(["weights", "fetch", "sam_vit_b"]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and captured.err.rstrip().splitlines()[-1] == errors[0]
    assert "sha256 checksum mismatch" in errors[0] and "sam_vit_b_01ec64.pth" in errors[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert not cache.exists() or leftovers(cache) == []

    assert main(["weights", "fetch"]) == 2  # no name: a one-line error too
    assert capsys.readouterr().err.startswith("error: weights fetch needs a model name")
