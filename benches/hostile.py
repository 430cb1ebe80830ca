"""Hostile clients against a release binary: what they cost the server, before and after limits.

    python3 benches/hostile.py [--binary target/release/cairn] [--label after]

Three measurements, each against a fresh server on the shipped tabular-small model:

1. Stalled bodies: 30 connections each send 50 MiB of a body declared as 64 MiB, then stall.
   Server RSS before, its peak over the 8 s after the sends, and 3 s after the clients close.
2. gzip bombs: the p50/p99 of single-row JSON requests on one connection, alone and while four
   clients keep sending bodies that inflate from 64 KiB to 64 MiB.
3. Idle connections: 2,000 connections that complete one request and stay idle, and 300 that
   send half a request head; how many the server still holds after 15 s (keep_alive and
   header_read timeouts at 5 s for the run).

Prints one Markdown row per measurement; the figures go to benches/README.md by hand.
"""

import argparse
import gzip
import json
import resource
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "load"))
import run as bench  # noqa: E402


def rss_mib(server) -> float:
    return server.rss() / (1 << 20)


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=30)
    return s


def stalled_bodies(server) -> dict:
    before = rss_mib(server)
    chunk = b" " * (1 << 20)
    socks, refused = [], 0

    def stall(i):
        nonlocal refused
        try:
            s = connect(server.addr)
            s.sendall(b"POST /v2/models/tabular-small/infer HTTP/1.1\r\nhost: x\r\n"
                      b"content-type: application/json\r\ncontent-length: 67108864\r\n\r\n")
            for _ in range(50):
                s.sendall(chunk)
            socks.append(s)
        except OSError:
            refused += 1

    threads = [threading.Thread(target=stall, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = max(rss_mib(server) for _ in range(16) if time.sleep(0.5) is None)
    for s in socks:
        s.close()
    time.sleep(3)
    after = rss_mib(server)
    return {"rss_before_mib": before, "rss_peak_held_mib": held, "rss_after_close_mib": after,
            "sends_cut_off": refused}


def request_latency(addr: str, seconds: float) -> list[float]:
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32",
                                   "data": [0.5] * 32}]}).encode()
    req = (b"POST /v2/models/tabular-small/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    s = connect(addr)
    times = []
    end = time.time() + seconds
    while time.time() < end:
        t0 = time.perf_counter()
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
        while len(rest) < length:
            rest += s.recv(65536)
        times.append((time.perf_counter() - t0) * 1e6)
    s.close()
    return times


def gzip_bombs(server) -> dict:
    alone = request_latency(server.addr, 5)
    bomb = gzip.compress(b" " * (64 << 20), 9)
    stop = threading.Event()

    def bomber():
        while not stop.is_set():
            try:
                s = connect(server.addr)
                s.sendall(b"POST /v2/models/tabular-small/infer HTTP/1.1\r\nhost: x\r\n"
                          b"content-encoding: gzip\r\nconnection: close\r\n"
                          + f"content-length: {len(bomb)}\r\n\r\n".encode() + bomb)
                while s.recv(65536):
                    pass
                s.close()
            except OSError:
                pass

    threads = [threading.Thread(target=bomber, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1)
    loaded = request_latency(server.addr, 5)
    stop.set()
    pct = lambda xs, q: sorted(xs)[int(q * (len(xs) - 1))]
    return {"alone_p50_us": statistics.median(alone), "alone_p99_us": pct(alone, 0.99),
            "bombs_p50_us": statistics.median(loaded), "bombs_p99_us": pct(loaded, 0.99)}


def idle_connections(server) -> dict:
    pid = server.proc.pid
    base_fds = open_fds(pid)
    before = rss_mib(server)
    idle, partial = [], []
    for _ in range(2000):
        try:
            s = connect(server.addr)
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            s.recv(4096)
            idle.append(s)
        except OSError:
            break
    for _ in range(300):
        try:
            s = connect(server.addr)
            s.sendall(b"POST /v2/models/tabular-small/infer HTTP/1.1\r\nhost: x\r\ncontent-")
            partial.append(s)
        except OSError:
            break
    time.sleep(1)
    held_fds = open_fds(pid) - base_fds
    held_rss = rss_mib(server)
    time.sleep(15)
    later_fds = open_fds(pid) - base_fds
    for s in idle + partial:
        s.close()
    return {"opened": len(idle) + len(partial), "held_after_1s": held_fds, "held_after_16s": later_fds,
            "rss_before_mib": before, "rss_held_mib": held_rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, default=bench.ROOT / "target" / "release" / "cairn")
    ap.add_argument("--label", default="this build")
    ap.add_argument("--new-settings", action="store_true",
                    help="pass the hardening settings (timeouts at 5 s) to the server")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = Path(__import__("tempfile").mkdtemp(prefix="cairn-hostile-"))
    repo = work / "repo"
    __import__("shutil").copytree(bench.ROOT / "models" / "tabular-small", repo / "tabular-small")
    extra = ["--keep-alive-timeout-s", "5", "--header-read-timeout-s", "5",
             "--body-read-timeout-s", "5"] if args.new_settings else []
    results = {}
    for name, measure in (("stalled", stalled_bodies), ("gzip", gzip_bombs), ("idle", idle_connections)):
        server = bench.Cairn(repo, args.binary, extra)
        try:
            results[name] = measure(server)
            bench.log(f"{name}: {results[name]}")
        finally:
            server.proc.kill()
            server.proc.wait()
    print(json.dumps({"label": args.label, **results}, indent=1))


if __name__ == "__main__":
    main()
