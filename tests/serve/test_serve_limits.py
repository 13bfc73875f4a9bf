"""`medclf serve` as a user starts it (a child process on 127.0.0.1, a free port): what all requests together
may cost. Memory under a mixed load of valid and oversized uploads, and an upload that stalls mid-body.

The server's temporary directory (TMPDIR) is a folder of the test, so its per-request folders can be counted.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

import medclf

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)

HOST = "127.0.0.1"  # loopback only
UPLOAD_TIMEOUT_S = 2
MIB = 2**20


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process (VmRSS in /proc/PID/status; VmHWM: its peak), MiB."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux: "5" to /proc/PID/clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def server(serve_run, tmp_path_factory):
    """(base URL, the server's TMPDIR, its process): `python -m medclf serve` with a 2 s upload timeout."""
    with _serve(serve_run, tmp_path_factory, "--upload-timeout", str(UPLOAD_TIMEOUT_S)) as started:
        yield started


@contextlib.contextmanager
def _serve(serve_run, tmp_path_factory, *options: str):
    tmp = tmp_path_factory.mktemp("server-tmp")
    log_path = tmp_path_factory.mktemp("server-log") / "serve.log"
    src = str(Path(medclf.__file__).resolve().parents[1])  # the sources under test, not another install
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "medclf", "serve", str(serve_run), "--host", HOST, "--port",
                                 "0", "--device", "cpu", *options], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield f"http://{HOST}:{_wait_for_port(proc, log_path)}", tmp, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_for_port(proc: subprocess.Popen, log_path: Path) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(rf"Uvicorn running on http://{re.escape(HOST)}:(\d+)", log_path.read_text())
        if found:
            return int(found.group(1))
        time.sleep(0.2)
    pytest.fail(f"the server did not start; its log:\n{log_path.read_text()[-3000:]}")


def png_13000_square() -> bytes:
    """A real 16-bit 13000 x 13000 PNG of zeros: 329 KB that would decode to 322 MiB (2 GiB at peak)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side, packer = 13000, zlib.compressobj(9)
    row = b"\0" * (1 + 2 * side)  # filter byte + 2 bytes per pixel
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def deflated_dicom_8192(make_dicom, path: Path) -> bytes:
    """An 8192 x 8192 16-bit DICOM of zeros in Deflated Explicit VR: 131 KB that inflates to 128 MiB."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(make_dicom(path, np.zeros((8, 8))))
    ds.Rows = ds.Columns = 8192
    ds.PixelData = bytes(8192 * 8192 * 2)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    return path.read_bytes()


def large_valid_dicom(make_dicom, path: Path) -> bytes:
    """A 4096 x 4096 16-bit gradient, deflated (230 KB): accepted (16 Mpx), ~225 MiB at the peak of decoding."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(make_dicom(path, np.add.outer(np.arange(4096), np.arange(4096)) % 4096))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    return path.read_bytes()


def post(client: httpx.Client, name: str, data: bytes) -> httpx.Response:
    return client.post("/api/predict", files={"files": (name, data)}, params={"heatmap": "false"}, timeout=120)


def test_memory_stays_bounded_under_a_mixed_load(server, make_dicom, tmp_path):
    """8 clients x 40 valid DICOMs (the first a 16 Mpx one), while a ninth sends a 13000^2 PNG and an 8192^2
    deflated DICOM: every valid file is answered, both big ones are refused before decoding, the server's RSS
    grows < 300 MiB, and at its peak by less than three 16 Mpx decodes (two run at once; eight could)."""
    base, tmp, proc = server
    rng = np.random.default_rng(0)
    valid = [make_dicom(tmp_path / f"v{i}.dcm", rng.integers(0, 4000, (64, 64))).read_bytes() for i in range(39)]
    valid.insert(0, large_valid_dicom(make_dicom, tmp_path / "large.dcm"))
    big = {"big.png": png_13000_square(), "deflated.dcm": deflated_dicom_8192(make_dicom, tmp_path / "dfl.dcm")}
    assert len(big["big.png"]) < 400_000 and len(big["deflated.dcm"]) < 200_000
    with httpx.Client(base_url=base) as warm:
        for data in valid[:4]:  # load the model's code paths once before the baseline
            assert post(warm, "warm.dcm", data).status_code == 200
    before = rss_mib(proc.pid)
    reset_peak(proc.pid)

    def client_sends(files: list[tuple[str, bytes]]) -> list[tuple[str, int, str]]:
        with httpx.Client(base_url=base) as c:
            answers = [(name, post(c, name, data)) for name, data in files]
        return [(name, r.status_code, r.json().get("detail", "")) for name, r in answers]

    loads = [[(f"c{k}-{i}.dcm", data) for i, data in enumerate(valid)] for k in range(8)]
    loads.append(list(big.items()) * 3)
    start = time.monotonic()
    with ThreadPoolExecutor(len(loads)) as pool:
        answers = [a for client in pool.map(client_sends, loads) for a in client]
    elapsed, after, peak = time.monotonic() - start, rss_mib(proc.pid), rss_mib(proc.pid, "VmHWM")
    refused_valid = [a for a in answers if a[0].startswith("c") and a[1] != 200]
    assert refused_valid == [] and len(answers) == 8 * 40 + 6
    for name, status, detail in (a for a in answers if a[0] in big):
        assert status == 400 and detail.startswith(f"{name}: image too large ("), detail
    memory = f"RSS {before:.0f} -> {after:.0f} MiB, peak {peak:.0f} MiB, in {elapsed:.0f} s"
    assert after - before < 300, memory
    assert peak - before < 3 * 225, memory
    assert not list(tmp.glob("medclf-serve-*"))  # every request's folder is gone


def test_a_stalled_upload_is_answered_and_its_folder_removed(server):
    """Headers and half a body, then silence: 408 within the upload timeout, and no temporary folder left."""
    base, tmp, _ = server
    port = int(base.rsplit(":", 1)[1])
    body = (b'--B\r\nContent-Disposition: form-data; name="files"; filename="slow.png"\r\n\r\n\x89PNG\r\n\x1a\n'
            + b"\0" * 65536 + b"\r\n--B--\r\n")
    head = (f"POST /api/predict HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary=B\r\n\r\n").encode()
    with socket.create_connection((HOST, port), timeout=UPLOAD_TIMEOUT_S + 15) as s:
        s.sendall(head + body[: len(body) // 2])
        start = time.monotonic()
        answer = _read_answer(s)
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"upload timed out" in answer
    assert UPLOAD_TIMEOUT_S - 0.5 < waited < UPLOAD_TIMEOUT_S + 10
    assert not list(tmp.glob("medclf-serve-*"))
    assert httpx.get(f"{base}/api/health").json()["status"] == "ok"


def _read_answer(s: socket.socket) -> bytes:
    """One HTTP answer: the head, then Content-Length bytes of body (or whatever came before the server closed)."""
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: (\d+)", head)
        if sep and length and len(rest) >= int(length.group(1)):
            return data
        try:
            more = s.recv(65536)
        except OSError:
            return data
        if not more:
            return data
        data += more


HEADER_TIMEOUT_S = 3  # --header-timeout, short for the test (default 10 s)
MAX_CONNECTIONS = 150  # --max-connections, below the flood so the cap is exercised too


@pytest.mark.slow
def test_a_flood_of_unfinished_headers_is_closed_within_the_bound_while_clients_are_answered(
        serve_run, sample_files, tmp_path_factory):
    """200 sockets that send a request line and one header, then nothing (slow-loris): /api/health and a DICOM
    prediction still answer 200 meanwhile, and every one of the 200 is closed by the server within the bound."""
    with _serve(serve_run, tmp_path_factory, "--header-timeout", str(HEADER_TIMEOUT_S),
                "--max-connections", str(MAX_CONNECTIONS)) as (base, _, _):
        port = int(base.rsplit(":", 1)[1])
        start = time.monotonic()
        flood = []
        for _ in range(200):
            s = socket.create_connection((HOST, port), timeout=10)
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\n")
            flood.append(s)
        with httpx.Client(base_url=base) as client:
            assert client.get("/api/health", timeout=30).status_code == 200
            answer = post(client, "chest.dcm", sample_files["dicom"].read_bytes())
            assert answer.status_code == 200, answer.text
            assert 0.0 <= answer.json()["results"][0]["probability"] <= 1.0
        answered = time.monotonic() - start
        closed_at = _wait_until_closed(flood, start, deadline_s=HEADER_TIMEOUT_S + 10)
        for s in flood:
            s.close()
        assert len(closed_at) == 200, f"{200 - len(closed_at)} sockets still open after {HEADER_TIMEOUT_S + 10} s"
        assert max(closed_at) < HEADER_TIMEOUT_S + 3, (answered, sorted(closed_at)[::20])
        assert answered < HEADER_TIMEOUT_S + 3  # the clients were served while the flood was open


def _wait_until_closed(sockets: list[socket.socket], start: float, deadline_s: float) -> list[float]:
    """Seconds after `start` at which the server closed each socket (EOF or reset); open ones are left out."""
    import selectors

    sel = selectors.DefaultSelector()
    for s in sockets:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = []
    while len(closed) < len(sockets) and time.monotonic() - start < deadline_s:
        for key, _ in sel.select(timeout=0.2):
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:  # woken without data: still open
                continue
            except ConnectionResetError:  # closed with a reset
                data = b""
            if not data:
                closed.append(time.monotonic() - start)
                sel.unregister(key.fileobj)
    sel.close()
    return closed
