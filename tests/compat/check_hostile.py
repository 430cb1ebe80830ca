"""Hostile clients against the real binary, on the surfaces beside HTTP/1.1: the gRPC port
(grpcio, and raw HTTP/2 frames from the `h2` package), HTTP/2 on the HTTP port, and half-sent
request heads. Each probe asserts the answer, that the server stays up and serves a
well-behaved client meanwhile, and that its peak RSS grows by no more than a stated bound.
The figures are printed as a table (benches/README.md quotes them).

Run: python tests/compat/check_hostile.py [path/to/cairn] [--measure]   (default:
target/debug/cairn; `--measure` reports instead of failing, to measure another build)
"""

from http.client import HTTPException
import json
import os
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cairn_server import ROOT, Server  # noqa: E402

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
BINARY = ARGS[0] if ARGS else os.path.join(ROOT, "target", "debug", "cairn")
MiB = 1 << 20
# The server runs with these, so that the bounds below are small enough to tell apart from
# noise (and a run takes seconds, not minutes).
BUDGET = 32 * MiB
BODY_TIMEOUT_S = 4
HEADER_TIMEOUT_S = 2
KEEP_ALIVE_S = 30
# Peak RSS growth allowed over the RSS before a probe: the payload budget, what one message or
# answer of the probe holds beyond it, and the allocator's and runtime's slack.
SLACK = 48 * MiB

FIGURES = []
# `--measure`: record what each probe sees without failing (to measure another build).
STRICT = "--measure" not in sys.argv
FAILURES = []


def expect(condition, message):
    if condition:
        return
    if STRICT:
        raise AssertionError(message)
    FAILURES.append(message)
    print(f"    (expected, not seen: {message})", flush=True)


def record(probe, **figures):
    FIGURES.append((probe, figures))
    print(f"  {probe}: " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)


def mib(n):
    return f"{n / MiB:.1f} MiB"


# --- a well-behaved client -------------------------------------------------------------------


def http(server, method, path, body=None, headers=None, timeout=10):
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(
        f"http://{server.url}{path}", data=data, method=method, headers=headers or {}
    )
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)
    except HTTPException as e:
        # An answer the client cannot even read (a 1 MiB header, say).
        return 0, json.dumps({"error": f"unreadable answer: {e}"}).encode(), {}


IRIS = {
    "inputs": [
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
    ]
}


def assert_serving(server, what):
    expect(server.alive(), f"{what}: the server died")
    t0 = time.time()
    status, _, _ = http(server, "GET", "/v2/health/live")
    expect(status == 200, f"{what}: live answered {status}")
    status, body, _ = http(server, "POST", "/v2/models/iris/infer", IRIS)
    expect(status == 200, f"{what}: inference answered {status}: {body[:200]}")
    return time.time() - t0


def grpc_raw(server, method, payload, timeout=30):
    """Calls `method` with `payload` as the raw message; returns (code, details)."""
    with grpc.insecure_channel(
        f"{server.grpc_host}:{server.grpc_port}",
        options=[("grpc.max_send_message_length", 256 * MiB)],
    ) as channel:
        call = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            call(payload, timeout=timeout)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()


class Peak:
    """The server's peak RSS over a probe, against its RSS before."""

    def __init__(self, server):
        self.server = server

    def __enter__(self):
        time.sleep(0.2)
        self.server.reset_peak()
        self.before = self.server.rss()
        return self

    def __exit__(self, *exc):
        self.growth = self.server.peak() - self.before
        return False


# --- raw HTTP/2 ------------------------------------------------------------------------------


class H2:
    """One HTTP/2 connection driven frame by frame."""

    def __init__(self, host, port, window=None):
        self.sock = socket.create_connection((host, port))
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        if window is not None:
            # A stream window of 0: the server may send headers but no data, as to a client
            # that never reads.
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.ended = {}  # stream id -> grpc-status / :status / "reset"
        self.sent = 0  # DATA bytes sent
        self.read_events(0.1)

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def read_events(self, wait):
        """Reads what arrives within `wait` seconds; returns False once the server closed."""
        deadline = time.time() + wait
        while True:
            left = deadline - time.time()
            if left <= 0:
                return True
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return True
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionError:
                return False
            if not data:
                return False
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                return False
            for ev in events:
                if isinstance(ev, h2.events.ResponseReceived):
                    for k, v in ev.headers:
                        if k in ("grpc-status",):
                            self.ended[ev.stream_id] = v
                elif isinstance(ev, h2.events.TrailersReceived):
                    for k, v in ev.headers:
                        if k == "grpc-status":
                            self.ended[ev.stream_id] = v
                elif isinstance(ev, h2.events.StreamReset):
                    self.ended.setdefault(ev.stream_id, "reset")
                elif isinstance(ev, h2.events.StreamEnded):
                    self.ended.setdefault(ev.stream_id, "ended")
                elif isinstance(ev, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            self.flush()

    def open(self, path, grpc_call=False, end=True):
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", "GET" if not grpc_call else "POST"), (":path", path),
                   (":scheme", "http"), (":authority", "x")]
        if grpc_call:
            headers += [("content-type", "application/grpc"), ("te", "trailers")]
        self.conn.send_headers(sid, headers, end_stream=end)
        return sid

    def send(self, sid, data, wait=0.2):
        """Sends as much of `data` as flow control lets through within `wait`; returns the rest."""
        deadline = time.time() + wait
        while data:
            if sid in self.ended:
                return b""
            try:
                window = min(self.conn.local_flow_control_window(sid),
                             self.conn.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                self.ended.setdefault(sid, "closed")
                return b""
            if window <= 0:
                if time.time() > deadline:
                    break
                self.read_events(0.05)
                continue
            try:
                self.conn.send_data(sid, data[:window])
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.ended.setdefault(sid, "closed")
                return b""
            self.sent += min(window, len(data))
            data = data[window:]
            self.flush()
        return data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def grpc_frame(message, declared=None):
    return struct.pack(">BI", 0, len(message) if declared is None else declared) + message


# --- probes ----------------------------------------------------------------------------------


def probe_empty_inputs(server):
    """A ModelInfer made only of empty `inputs` entries: refused before it is decoded."""
    message = b"\x2a\x00" * (6 * MiB)  # 12 MiB of 2-byte entries
    with Peak(server) as p:
        t0 = time.time()
        code, details = grpc_raw(server, "ModelInfer", message)
        took = time.time() - t0
    expect(code == grpc.StatusCode.INVALID_ARGUMENT, str((code, details)))
    expect("tensors" in details, str(details))
    expect(p.growth < 12 * MiB + SLACK, str(mib(p.growth)))
    record("gRPC ModelInfer, 12 MiB of empty inputs", answer=code.name, seconds=f"{took:.2f}",
           peak_rss_growth=mib(p.growth), bound=mib(12 * MiB + SLACK))
    assert_serving(server, "empty inputs")


def probe_malformed(server):
    code, details = grpc_raw(server, "ModelInfer", b"\x2a\x05\x00")
    expect(code == grpc.StatusCode.INVALID_ARGUMENT, str((code, details)))
    code, details = grpc_raw(server, "ModelInfer", b"\x1a\x02\xc3\x28")
    expect(code == grpc.StatusCode.INVALID_ARGUMENT, str((code, details)))
    record("gRPC malformed protobuf", answer=code.name)


def probe_long_ids(server):
    long_id = "x" * MiB
    status, body, headers = http(server, "POST", "/v2/models/iris/infer", dict(IRIS, id=long_id))
    expect(status == 400, str(status))
    expect("request id" in json.loads(body)["error"], str(body[:200]))
    expect(len(headers.get("x-request-id", "")) <= 1024, 'len(headers.get("x-request-id", "")) <= 1024')
    # In protobuf: field 3 (id) of 1 MiB.
    message = b"\x1a" + _varint(len(long_id)) + long_id.encode()
    code, details = grpc_raw(server, "ModelInfer", message)
    expect(code == grpc.StatusCode.INVALID_ARGUMENT, str((code, details)))
    record("1 MiB request id (HTTP and gRPC)", http=status, grpc=code.name)


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def probe_stalled_grpc_messages(server):
    """24 streams each sending 7.5 MiB of an 8 MiB message, then stalling."""
    streams = 24
    with Peak(server) as p:
        # Calls start as soon as each connection is up (a connection that starts none within
        # the header timeout is closed, as it should be).
        conns, opened = [], []
        for i in range(streams):
            if i % 4 == 0:
                conns.append(H2(server.grpc_host, server.grpc_port))
            c = conns[-1]
            sid = c.open("/inference.GRPCInferenceService/ModelInfer", grpc_call=True, end=False)
            c.flush()
            opened.append((c, sid, grpc_frame(b"\x00" * int(7.5 * MiB), declared=8 * MiB)))
        # Send what flow control allows, round after round, for a few seconds.
        t0 = time.time()
        pending = list(opened)
        while pending and time.time() - t0 < 3:
            still = []
            for c, sid, data in pending:
                if sid in c.ended:
                    continue
                rest = c.send(sid, data, wait=0.05)
                if rest:
                    still.append((c, sid, rest))
            pending = still
        sent = sum(c.sent for c in conns)
        # Then stall: nothing more is sent; every stream must end within the body timeout.
        deadline = time.time() + BODY_TIMEOUT_S + 10
        while time.time() < deadline:
            for c in conns:
                c.read_events(0.05)
            if sum(len(c.ended) for c in conns) >= streams:
                break
        ended = sum(len(c.ended) for c in conns)
        codes = sorted({v for c in conns for v in c.ended.values()})
        stalled_for = time.time() - t0
        for c in conns:
            c.close()
    expect(ended == streams, f"{ended} of {streams} streams ended: {[c.ended for c in conns]}")
    expect(p.growth < BUDGET + SLACK, str(mib(p.growth)))
    record("gRPC: 24 streams × 7.5 MiB of an 8 MiB message, then stalled", ended=f"{ended}/{streams}",
           sent=mib(sent), grpc_status=",".join(codes), seconds=f"{stalled_for:.1f}",
           peak_rss_growth=mib(p.growth), bound=mib(BUDGET + SLACK))
    assert_serving(server, "stalled gRPC messages")


def probe_unread_answers(server, grpc_port=False):
    """40 connections × 128 streams whose answers the client never reads."""
    connections, per = 40, 128
    host, port = (server.grpc_host, server.grpc_port) if grpc_port else (server.host, server.port)
    refused_before = server.metric("cairn_http_requests_refused_total")
    with Peak(server) as p:
        conns = []
        for _ in range(connections):
            c = H2(host, port, window=0)
            for _ in range(per):
                if grpc_port:
                    sid = c.open("/inference.GRPCInferenceService/ModelConfig", grpc_call=True,
                                 end=False)
                    # ModelConfigRequest { name: "iris" }
                    c.conn.send_data(sid, grpc_frame(b"\x0a\x04iris"), end_stream=True)
                else:
                    c.open("/metrics")
            c.flush()
            conns.append(c)
        # The server answers what it admits and waits for the clients to read.
        time.sleep(1.5)
        during = assert_serving(server, "unread answers (while held)")
        held = server.metric("cairn_http_unread_answer_bytes")
        refused = server.metric("cairn_http_requests_refused_total") - refused_before
        # Nothing is read: every connection, holding answers it never lets the server send, is
        # dropped after the send window.
        t0 = time.time()
        left = held
        while time.time() - t0 < BODY_TIMEOUT_S + 10:
            left = server.metric("cairn_http_unread_answer_bytes")
            if left == 0:
                break
            time.sleep(0.25)
        freed_after = time.time() - t0 + 1.5
        closed = sum(1 for c in conns if _closed(c.sock))
        for c in conns:
            c.close()
    expect(left == 0, f"{left} bytes of unread answers still held")
    expect(closed == connections, f"{closed} of {connections} connections were closed")
    expect(p.growth < BUDGET + SLACK, str(mib(p.growth)))
    what = "gRPC ModelConfig" if grpc_port else "h2c GET /metrics"
    record(f"{what}: {connections} connections × {per} streams, never read",
           unread_held=mib(held), refused=int(refused), dropped=f"{closed}/{connections}",
           freed_after=f"{freed_after:.1f} s", healthy_request=f"{during * 1000:.0f} ms",
           peak_rss_growth=mib(p.growth), bound=mib(BUDGET + SLACK))
    assert_serving(server, "unread answers")


def _closed(sock):
    """Whether the server closed the connection. What it sent before closing is read first: a
    close waits in the kernel behind the data the client never read."""
    sock.settimeout(1.0)
    try:
        while sock.recv(1 << 20):
            pass
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


def _post_raw(server, path, body, results, i):
    results[i] = http(server, "POST", path, body, {"Content-Type": "application/json"}, timeout=60)


def probe_feedback(server):
    """Feedback the writer once died of, and bodies that once decoded to 21 bytes per byte."""
    # A logged row, then a label dated past year 9999: refused, and monitoring goes on.
    status, _, _ = http(server, "POST", "/v2/models/iris/infer", dict(IRIS, id="hostile-1"))
    expect(status == 200, f"inference {status}")
    status, body, _ = http(server, "POST", "/v2/models/iris/feedback",
                           {"feedback": [{"id": "hostile-1", "label": 0, "time": 1e12}]})
    expect(status == 400 and b"time" in body, f"time 1e12: {status} {body[:200]}")
    time_status = status
    status, body, _ = http(server, "POST", "/v2/models/iris/feedback",
                           {"feedback": [{"id": "hostile-1", "label": 0}]})
    matched = json.loads(body).get("matched") if status == 200 else None
    expect(matched == 1, f"feedback after the bad time: {status} {body[:200]}")
    # Two bodies of 15 MiB with more items than the cap, at once.
    item = b'{"id":"x","label":1},'
    big = b'{"feedback":[' + item * (15 * MiB // len(item)) + b'{"id":"x","label":1}]}'
    results = [None, None]
    with Peak(server) as p:
        t0 = time.time()
        threads = [threading.Thread(target=_post_raw, args=(server, "/v2/models/iris/feedback",
                                                           big, results, i)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.time() - t0
    statuses = [r[0] for r in results]
    expect(statuses == [400, 400], f"over-cap bodies: {statuses} {results[0][1][:200]}")
    bound = 2 * 15 * MiB + SLACK
    expect(p.growth < bound, f"over-cap bodies grew RSS by {mib(p.growth)}")
    record("feedback: a time of 1e12, then two 15 MiB bodies over the item cap at once",
           time_answer=time_status, later_feedback_matched=matched, answers=statuses,
           seconds=f"{took:.2f}", peak_rss_growth=mib(p.growth), bound=mib(bound))
    # Sixteen labels of 4 MiB: refused, nothing kept.
    before = server.rss()
    label = "y" * (4 * MiB)
    answers = set()
    for i in range(16):
        status, _, _ = http(server, "POST", "/v2/models/iris/feedback",
                            {"feedback": [{"id": "hostile-1", "label": label}]})
        answers.add(status)
    time.sleep(0.5)
    kept = server.rss() - before
    expect(answers == {400}, f"oversized labels: {answers}")
    expect(kept < 16 * MiB, f"oversized labels kept {mib(kept)}")
    record("feedback: 16 labels of 4 MiB", answers=sorted(answers), rss_kept=mib(kept))
    assert_serving(server, "feedback")


def probe_half_sent_heads(server):
    """A head sent halfway, on a new connection and between keep-alive requests."""
    s = socket.create_connection((server.host, server.port))
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
    t0 = time.time()
    s.settimeout(KEEP_ALIVE_S + 10)
    expect(s.recv(4096) == b"", "the server answered a half-sent head")
    new_conn = time.time() - t0
    s.close()
    s = socket.create_connection((server.host, server.port))
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(5)
    expect(s.recv(4096).startswith(b"HTTP/1.1 200"), 's.recv(4096).startswith(b"HTTP/1.1 200")')
    time.sleep(0.5)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHo")
    t0 = time.time()
    s.settimeout(KEEP_ALIVE_S + 10)
    expect(s.recv(4096) == b"", 's.recv(4096) == b""')
    keep_alive = time.time() - t0
    s.close()
    for took in (new_conn, keep_alive):
        expect(took < HEADER_TIMEOUT_S * 1.5 + 1, f"closed after {new_conn:.1f} s and {keep_alive:.1f} s")
    record("half-sent request head", header_read_timeout=f"{HEADER_TIMEOUT_S} s",
           new_connection_closed_after=f"{new_conn:.1f} s",
           keep_alive_connection_closed_after=f"{keep_alive:.1f} s")


def main():
    repo = tempfile.mkdtemp(prefix="cairn-hostile-")
    shutil.copytree(os.path.join(ROOT, "models", "iris"), os.path.join(repo, "iris"))
    server = Server(
        BINARY, repo,
        "--max-buffered-body-bytes", str(BUDGET),
        "--max-body-bytes", str(16 * MiB),
        "--body-read-timeout-s", str(BODY_TIMEOUT_S),
        "--header-read-timeout-s", str(HEADER_TIMEOUT_S),
        "--keep-alive-timeout-s", str(KEEP_ALIVE_S),
    )
    try:
        server.wait_ready()
        assert_serving(server, "start")
        print(f"server RSS at start: {mib(server.rss())}", flush=True)
        for probe in (
            probe_empty_inputs,
            probe_malformed,
            probe_long_ids,
            probe_stalled_grpc_messages,
            probe_unread_answers,
            lambda s: probe_unread_answers(s, grpc_port=True),
            probe_feedback,
            probe_half_sent_heads,
        ):
            probe(server)
        print("\n| probe | figures |\n|---|---|")
        for probe, figures in FIGURES:
            print(f"| {probe} | " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in figures.items()) + " |")
        if FAILURES:
            print(f"\n{len(FAILURES)} expectations not met (--measure)")
        else:
            print("\nall hostile probes passed")
    except Exception:
        print("".join(server.log[-60:]), file=sys.stderr)
        raise
    finally:
        server.stop()
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()
