"""hw1_download_ckpt.sh (and its 2021-22 name hw1_download.sh): fetch, verify, skip, resume, refuse; one-line errors;
--write-manifest.

Downloads come from file:// URLs or a python http.server on 127.0.0.1 (which ignores byte ranges,
so curl cannot resume from it and must start again); no test needs the internet.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = [c for c in ("curl", "wget") if shutil.which(c)]
NAME = "p1_classifier.pt"
PAYLOAD = os.urandom(200_000)
needs_curl = pytest.mark.skipif("curl" not in CLIENTS, reason="curl not installed")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """Serves `root` on 127.0.0.1; `cut_next` makes the next response stop halfway through its body."""

    def __init__(self, root: Path) -> None:
        self.root, self.cut_next, self.requests = root, False, 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if server.cut_next:
                    server.cut_next = False
                    body = (server.root / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / NAME).write_bytes(PAYLOAD)
    s = Server(upload)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout holding the script and the committed MANIFEST (which lists nothing yet)."""
    (tmp_path / "repo" / "checkpoints").mkdir(parents=True)
    for script in ("hw1_download_ckpt.sh", "hw1_download.sh"):
        shutil.copy(ROOT / script, tmp_path / "repo")
    shutil.copy(ROOT / "checkpoints" / "MANIFEST", tmp_path / "repo" / "checkpoints")
    return tmp_path / "repo"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def list_file(repo: Path, url: str, digest: str = sha(PAYLOAD), name: str = NAME) -> None:
    with open(repo / "checkpoints" / "MANIFEST", "a") as f:
        f.write(f"{name} {digest} {url}\n")


def download(repo: Path, *args: str, client: str | None = "curl", script: str = "hw1_download_ckpt.sh",
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the script from another directory (it must find its checkpoints/ by itself); client None: its own pick."""
    elsewhere = repo.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = {**os.environ, **(env or {})}
    env.pop("HW1_DOWNLOADER", None)
    return subprocess.run(["bash", str(repo / script), *args], cwd=elsewhere, capture_output=True, text=True,
                          env={**env, "HW1_DOWNLOADER": client} if client else env, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess, code: int, start: str) -> str:
    assert proc.returncode == code, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {start}") and " — " in lines[0], proc.stderr
    return lines[0]


def files(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "checkpoints").iterdir() if p.name != "MANIFEST")


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_manifest_is_committed_not_ignored() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "checkpoints/MANIFEST"], cwd=ROOT)
    assert ignored.returncode == 1  # 1: not ignored; the checkpoints themselves stay ignored
    assert subprocess.run(["git", "check-ignore", "-q", "checkpoints/p1_classifier.pt"], cwd=ROOT).returncode == 0


def test_help(repo: Path) -> None:
    proc = download(repo, "--help")
    assert (proc.returncode == 0 and proc.stdout.startswith("Fetch the trained checkpoints")
            and "--write-manifest" in proc.stdout)


def test_old_name_and_wget_first(tmp_path: Path, repo: Path) -> None:
    """hw1_download.sh runs hw1_download_ckpt.sh; with both clients present the course's wget is the one used
    (fakes on PATH: wget copies the file, curl fails)."""
    source = tmp_path / "payload.bin"
    source.write_bytes(PAYLOAD)
    fakes = tmp_path / "bin"
    fakes.mkdir()
    (fakes / "wget").write_text(f'#!/bin/sh\nwhile [ "$1" != -O ]; do shift; done\ncp {source} "$2"\n')
    (fakes / "curl").write_text("#!/bin/sh\nexit 99\n")
    for fake in fakes.iterdir():
        fake.chmod(0o755)
    list_file(repo, "https://example.invalid/p1_classifier.pt")
    proc = download(repo, client=None, script="hw1_download.sh", env={"PATH": f"{fakes}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc
    assert (repo / "checkpoints" / NAME).read_bytes() == PAYLOAD


@pytest.mark.parametrize("client", CLIENTS)
def test_downloads_and_verifies(client: str, repo: Path, server: Server) -> None:
    list_file(repo, f"{server.url}/{NAME}")
    proc = download(repo, client=client)
    assert proc.returncode == 0, proc
    assert (repo / "checkpoints" / NAME).read_bytes() == PAYLOAD and files(repo) == [NAME]
    assert f"checkpoints/{NAME}: downloaded, sha256 verified" in proc.stdout


@needs_curl
def test_file_url_and_a_table_with_crlf_and_upper_case_hex(repo: Path, server: Server) -> None:
    (repo / "checkpoints" / "MANIFEST").write_bytes(
        f"{NAME} {sha(PAYLOAD).upper()} {(server.root / NAME).as_uri()}\r\n".encode())
    assert download(repo).returncode == 0 and (repo / "checkpoints" / NAME).read_bytes() == PAYLOAD


@pytest.mark.parametrize("client", CLIENTS)
def test_verified_file_is_skipped_without_the_network(client: str, repo: Path) -> None:
    (repo / "checkpoints" / NAME).write_bytes(PAYLOAD)
    os.utime(repo / "checkpoints" / NAME, (1, 1))
    list_file(repo, f"http://127.0.0.1:{closed_port()}/{NAME}")  # would fail if it were fetched
    proc = download(repo, client=client)
    assert proc.returncode == 0 and proc.stderr == "", proc
    assert f"checkpoints/{NAME}: present, sha256 verified" in proc.stdout
    assert (repo / "checkpoints" / NAME).stat().st_mtime == 1 and files(repo) == [NAME]


@pytest.mark.parametrize("client", CLIENTS)
def test_corrupted_file_is_downloaded_again(client: str, repo: Path, server: Server) -> None:
    (repo / "checkpoints" / NAME).write_bytes(PAYLOAD[:1000] + b"x" + PAYLOAD[1001:])
    list_file(repo, f"{server.url}/{NAME}")
    proc = download(repo, client=client)
    assert proc.returncode == 0 and "does not match" in proc.stdout, proc
    assert (repo / "checkpoints" / NAME).read_bytes() == PAYLOAD and files(repo) == [NAME]


@pytest.mark.parametrize("client", CLIENTS)
def test_checksum_mismatch_is_refused_and_not_kept(client: str, repo: Path, server: Server) -> None:
    list_file(repo, f"{server.url}/{NAME}", digest=sha(b"another file"))
    line = one_error_line(download(repo, client=client), 1, f"{server.url}/{NAME}: sha256 {sha(PAYLOAD)} is not ")
    assert "not kept" in line and files(repo) == []


@pytest.mark.parametrize("client, scheme, part", [
    ("curl", "file", PAYLOAD[:50_000]),           # a real resume: curl continues from byte 50,000
    ("curl", "http", PAYLOAD[:50_000]),           # http.server ignores Range: curl exit 33, then afresh
    ("curl", "file", b"y" * 50_000),              # resumed bytes fail the sha256: fetched afresh
    ("wget", "http", PAYLOAD[:50_000]),           # wget restarts by itself when the server ignores Range
], ids=["curl-file-resume", "curl-http-afresh", "curl-file-bad-bytes", "wget-http"])  # pytest 8 would put the bytes
# into the test id and PYTEST_CURRENT_TEST, past the kernel's limit for one environment variable
def test_partial_download_is_resumed_or_restarted(client: str, scheme: str, part: bytes, repo: Path,
                                                  server: Server) -> None:
    if client not in CLIENTS:
        pytest.skip(f"{client} not installed")
    list_file(repo, (server.root / NAME).as_uri() if scheme == "file" else f"{server.url}/{NAME}")
    (repo / "checkpoints" / f"{NAME}.part").write_bytes(part)
    proc = download(repo, client=client)
    assert proc.returncode == 0 and "resuming the partial download" in proc.stdout, proc
    assert (repo / "checkpoints" / NAME).read_bytes() == PAYLOAD and files(repo) == [NAME]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_cut_off_download_never_reaches_the_final_name(client: str, repo: Path, server: Server) -> None:
    list_file(repo, f"{server.url}/{NAME}")
    server.cut_next = True
    first = download(repo, client=client)
    if first.returncode != 0:  # curl gives up on the short body; wget retries (with -c) within the same run
        one_error_line(first, 1, f"{server.url}/{NAME}: download of {NAME} failed (")
        assert files(repo) == [f"{NAME}.part"]
        assert download(repo, client=client).returncode == 0
    assert (repo / "checkpoints" / NAME).read_bytes() == PAYLOAD and files(repo) == [NAME]


@pytest.mark.parametrize("client", CLIENTS)
def test_offline_is_one_line_and_keeps_a_partial_download(client: str, repo: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/{NAME}"
    list_file(repo, url)
    one_error_line(download(repo, client=client), 1, f"{url}: download of {NAME} failed (")
    assert files(repo) == []
    (repo / "checkpoints" / f"{NAME}.part").write_bytes(PAYLOAD[:1000])  # a stopped run's part: kept to resume later
    one_error_line(download(repo, client=client), 1, f"{url}: download of {NAME} failed (")
    assert files(repo) == [f"{NAME}.part"]


@needs_curl
def test_bad_url_is_one_line(repo: Path, server: Server) -> None:
    list_file(repo, f"{server.url}/no_such_file.pt")
    one_error_line(download(repo), 1, f"{server.url}/no_such_file.pt: download of {NAME} failed (")
    assert files(repo) == []


def test_empty_missing_or_malformed_table_is_one_line(repo: Path) -> None:
    line = one_error_line(download(repo), 2, "checkpoints/MANIFEST: no checkpoints listed")  # the committed table
    assert "--write-manifest" in line
    list_file(repo, "file:///x.pt", digest="abc")
    one_error_line(download(repo), 2, "checkpoints/MANIFEST: line 4: 'abc' is not a sha256")
    (repo / "checkpoints" / "MANIFEST").write_text(f"../escape.pt {sha(PAYLOAD)} file:///x.pt\n")
    one_error_line(download(repo), 2, "checkpoints/MANIFEST: line 1: '../escape.pt' must be a plain file name")
    (repo / "checkpoints" / "MANIFEST").unlink()
    one_error_line(download(repo), 2, "checkpoints/MANIFEST: not found")


@needs_curl
def test_write_manifest_lists_uploaded_files(repo: Path, server: Server) -> None:
    ckpt, offline = repo / "checkpoints", f"http://127.0.0.1:{closed_port()}/hw1"
    (ckpt / NAME).write_bytes(b"old")
    (ckpt / "p2_deeplab.pt").write_bytes(b"seg")
    assert download(repo, "--write-manifest", f"{offline}/", str(ckpt / NAME),
                    str(ckpt / "p2_deeplab.pt")).returncode == 0
    (ckpt / NAME).write_bytes(PAYLOAD)  # retrained and uploaded again: its line is replaced, the other kept
    proc = download(repo, "--write-manifest", server.url, str(ckpt / NAME))
    assert proc.returncode == 0, proc
    table = (ckpt / "MANIFEST").read_text()
    assert table.startswith("# ")  # the comments stay
    entries = [line.split() for line in table.splitlines() if not line.startswith("#")]
    assert entries == [["p2_deeplab.pt", sha(b"seg"), f"{offline}/p2_deeplab.pt"],
                       [NAME, sha(PAYLOAD), f"{server.url}/{NAME}"]]
    (ckpt / NAME).unlink()
    (ckpt / "p2_deeplab.pt").unlink()
    one_error_line(download(repo), 1, f"{offline}/p2_deeplab.pt: download of p2_deeplab.pt failed")
    assert files(repo) == []  # the first entry fails, offline: nothing else fetched, nothing partial left
    before = table
    one_error_line(download(repo, "--write-manifest", server.url, str(ckpt / "gone.pt")), 2,
                   f"{ckpt / 'gone.pt'}: file not found")
    assert (ckpt / "MANIFEST").read_text() == before and not list(ckpt.glob(".MANIFEST*"))
