"""Slow-loris check of a running `medclf serve`: N sockets send an unfinished request head, then nothing.

While they are open it times `/api/health` and one DICOM prediction, then reports how many of the N the server
closed within `--wait` seconds and when (seconds after the first connect). Not part of `make bench`.

    medclf serve RUN --port 8000 &
    python -m benchmarks.slow_headers --port 8000 --sockets 500 --wait 25 --dicom chest.dcm
"""

from __future__ import annotations

import argparse
import resource
import selectors
import socket
import time

import httpx

HEAD = b"POST /api/predict HTTP/1.1\r\nHost: x\r\n"  # a request line and one header; the blank line never comes


def closed_times(sockets: list[socket.socket], start: float, wait_s: float) -> list[float]:
    """Seconds after `start` at which the server closed each socket (EOF or reset), sorted; open ones left out."""
    sel = selectors.DefaultSelector()
    for s in sockets:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed: list[float] = []
    while len(closed) < len(sockets) and time.monotonic() - start < wait_s:
        for key, _ in sel.select(timeout=0.2):
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                closed.append(time.monotonic() - start)
                sel.unregister(key.fileobj)
    sel.close()
    return sorted(closed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--wait", type=float, default=25.0)
    parser.add_argument("--dicom", required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.sockets + 256)), hard))
    start = time.monotonic()
    flood = [socket.create_connection(("127.0.0.1", args.port), timeout=10) for _ in range(args.sockets)]
    for s in flood:
        s.sendall(HEAD)
    with httpx.Client(base_url=f"http://127.0.0.1:{args.port}") as client:
        t = time.monotonic()
        health = client.get("/api/health", timeout=60)
        t_health, t = time.monotonic() - t, time.monotonic()
        with open(args.dicom, "rb") as f:
            answer = client.post("/api/predict", files={"files": ("chest.dcm", f.read())},
                                 params={"heatmap": "false"}, timeout=120)
        t_predict = time.monotonic() - t
    print(f"{args.sockets} sockets open; /api/health {health.status_code} in {t_health:.3f} s; "
          f"DICOM predict {answer.status_code} in {t_predict:.3f} s")
    closed = closed_times(flood, start, args.wait)
    for s in flood:
        s.close()
    print(f"closed by the server within {args.wait:g} s: {len(closed)} of {args.sockets}")
    if closed:
        print(f"close times after the first connect: min {closed[0]:.2f} s, median {closed[len(closed) // 2]:.2f} s, "
              f"max {closed[-1]:.2f} s")


if __name__ == "__main__":
    main()
