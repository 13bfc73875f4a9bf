"""A real uvicorn server on 127.0.0.1 (background thread, free port): the size cap while streaming, and the page
in a real headless Chromium (Debian's `chromium`, driven by Playwright; never downloaded).

Set MEDCLF_SERVE_SCREENSHOT=docs/img/serve.png to also save the page's screenshot there (the README's picture);
MEDCLF_SERVE_RUN / MEDCLF_SERVE_IMAGE swap in another run and DICOM for that picture.
"""

from __future__ import annotations

import base64
import os
import select
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)

MB = 2**20
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def live_server(predictor, tmp_path_factory):
    """(base_url, upload_dir) of a uvicorn server running the app in a background thread."""
    import uvicorn

    from medclf.serve.app import create_app
    from medclf.serve.predictor import ServeModel

    if os.environ.get("MEDCLF_SERVE_RUN"):
        predictor = ServeModel.load(os.environ["MEDCLF_SERVE_RUN"], "cpu")
    upload_dir = tmp_path_factory.mktemp("live-uploads")
    # 1 MiB keeps the streaming test short; the docs picture shows the default limit
    limit = 20 if os.environ.get("MEDCLF_SERVE_SCREENSHOT") else 1
    app = create_app(predictor, max_upload_mb=limit, upload_dir=upload_dir)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; uvicorn serves on this very socket
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 60 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", upload_dir
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


def test_oversize_upload_is_refused_while_streaming(live_server):
    """A chunked upload of 8x the limit gets its 413 long before the client has sent everything."""
    base, upload_dir = live_server
    port = int(base.rsplit(":", 1)[1])
    limit = int(httpx.get(f"{base}/api/model").json()["max_upload_mb"] * MB)
    head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary=B\r\n\r\n").encode()
    part = b'--B\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n\x89PNG\r\n\x1a\n'
    chunk = b"\0" * 65536
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        while sent < 8 * limit and not answer:
            try:
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            except OSError:  # the server answered and closed: stop sending
                pass
            if select.select([s], [], [], 0.01)[0] or sent >= 8 * limit:
                answer = _read_answer(s)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"upload too large" in answer
    assert sent < 2 * limit  # refused after about one limit's worth of the eight
    assert list(upload_dir.iterdir()) == []
    assert httpx.get(f"{base}/api/health").json()["status"] == "ok"


def _read_answer(s: socket.socket) -> bytes:
    data = b""
    s.settimeout(5)
    try:
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            more = s.recv(65536)
            if not more:
                break
            data += more
    except OSError:
        pass
    return data


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium found (make browser installs Debian's chromium); the browser test needs one")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def test_page_uploads_a_dicom_and_shows_the_probability(live_server, browser, sample_files, tmp_path):
    base, upload_dir = live_server
    dicom = Path(os.environ.get("MEDCLF_SERVE_IMAGE") or sample_files["dicom"])
    with open(dicom, "rb") as fh:
        api = httpx.post(f"{base}/api/predict", files={"files": (dicom.name, fh)}, timeout=60).json()["results"][0]
    page = browser.new_page(viewport={"width": 1280, "height": 820})
    errors, hosts = [], set()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: hosts.add(r.url.split("/")[2] if "://" in r.url and not r.url.startswith("data:")
                                           else "data"))
    page.goto(base + "/")
    page.wait_for_selector("#model-facts dt", timeout=30000)
    assert page.text_content("#model-name") == api["model"]
    model = httpx.get(f"{base}/api/model", timeout=30).json()
    if model["threshold_source"] == "default":  # the tiny run's: a fallback threshold is said on the page
        assert page.is_visible("#model-warning")
        assert "the operating threshold is not fitted to data" in page.text_content("#model-warning")

    page.set_input_files("#file-input", str(dicom))  # "choose a file"
    page.wait_for_selector(".result [data-testid=probability]", timeout=60000)
    shown = page.text_content(".result [data-testid=probability]")
    assert shown == f"{api['probability'] * 100:.1f}%"
    assert float(page.get_attribute(".result [data-testid=probability]", "data-value")) == pytest.approx(
        api["probability"], abs=1e-6)
    assert page.text_content(".result .decision") == api["label"]
    fallback = " (default: not fitted to data)" if model["threshold_source"] == "default" else ""
    assert page.text_content(".result .threshold-text") == f"operating threshold {api['threshold']:.3f}{fallback}"
    assert page.text_content(".result .file-name") == dicom.name
    width = page.eval_on_selector(".result .radiograph", "img => img.complete ? img.naturalWidth : -1")
    assert width == api["image_size"]
    assert (page.get_attribute(".result .heatmap", "src") is not None) == (api["heatmap"] is not None)

    # drop a file onto the zone, as a user dragging from the desktop would
    payload = base64.b64encode(dicom.read_bytes()).decode()
    transfer = page.evaluate_handle("""(b64) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer(); dt.items.add(new File([bytes], 'dropped.dcm')); return dt; }""", payload)
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    # (no wait_for_function: the page's CSP forbids eval, which it would use)
    page.locator(".result [data-testid=probability]").nth(1).wait_for(timeout=60000)
    assert page.text_content(".result .file-name") == "dropped.dcm"  # newest first
    assert page.text_content(".result [data-testid=probability]") == shown

    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MEDCLF_SERVE_SCREENSHOT"):
        page.evaluate("document.querySelectorAll('.result')[0].remove()")  # one result reads better in the docs
        page.screenshot(path=os.environ["MEDCLF_SERVE_SCREENSHOT"], full_page=True)

    # a wrong file type shows the server's reason on the page instead of a result
    page.set_input_files("#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                "buffer": b"not an image"}])
    page.wait_for_selector(".result.failed", timeout=30000)
    failed = page.text_content(".result.failed")
    assert failed.startswith("notes.txt: unsupported file type") and failed.count("notes.txt") == 1, failed
    page.close()
    assert errors == [] or all("415" in e for e in errors), errors  # the browser logs the 415 itself
    assert hosts <= {f"127.0.0.1:{base.rsplit(':', 1)[1]}", "data"}, hosts  # nothing loaded from elsewhere
    assert list(upload_dir.iterdir()) == []
