"""The cairn binary as a child process, for the Python checks (tests/compat) and the benches:
started on free ports (its log names both addresses), its log kept, waited for until ready,
called over HTTP, its memory read from /proc, stopped with SIGTERM and its exit status returned.

    server = Server(binary, repo, "--state-dir", state)   # back once the log names the addresses
    server.wait_ready(["iris"])
    status, headers, answer = server.call("POST", "/v2/models/iris/infer", body)
    code = server.stop()                                  # 0: a clean shutdown

Every script starts the binary through here, so that what they all rely on (the log lines the
addresses are read from, the shutdown they check) is read one way, in one place. The benches
import it with a sys.path insert.
"""

import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Read before the HTTP pattern: a gRPC line that named its scheme would match that one too.
GRPC_LINE = re.compile(r"gRPC listening on (?:\w+://)?(\S+)")
HTTP_LINE = re.compile(r"listening on http://(\S+)")
# `Server.log` keeps the latest lines only: a hostile probe logs a warning per connection.
LOG_LINES = 5000
# Replies on a check's connection: generous, the CI machine has two shared cores.
CALL_TIMEOUT_S = 60


def wait_for(condition, timeout, interval=0.1):
    """Polls `condition` until it holds or `timeout` seconds pass; its last value (one last try
    at the deadline, so that a slow machine does not fail what has just come true)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return condition()


def answers_200(url, timeout=5):
    """Whether a GET of `url` answers 200, on a connection of its own (none is left open to the
    server); any error, a refused connection included, is a no."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - not up yet, whatever the reason
        return False


def metrics(address, timeout=10):
    """Every series that /metrics at `address` (host:port) exposes: {'name{labels}': value},
    scraped on a connection of its own."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


def _host_port(address):
    host, port = address.rsplit(":", 1)
    return host, int(port)


class Server:
    """`binary serve --listen 127.0.0.1:0 --model-repository repo *args`; with repo None,
    `binary *args` as they are (a command line as a manifest gives it).

    env: variables set over this process's environment and NO_COLOR=1, RUST_LOG=info; with
        inherit=False, the whole environment (the caller's, to the letter).
    cwd: the server's working directory, where relative paths of its settings resolve.
    prefix: a command to run the binary under (valgrind and its options).
    grpc: whether the gRPC address is waited for too (False where gRPC is off).
    wait: seconds to wait for the addresses; a server that exits first or has not named them
        by then is killed and RuntimeError raised with its log. 0: back at once, for a server
        that may refuse to start; `started()` waits.
    log_file: a path that gets the whole log as it comes (`log` keeps the latest lines only).

    Attributes: proc; log, the lines of stdout and stderr together, colours stripped; url,
    host and port of HTTP ("host:port", None until logged); grpc, grpc_host and grpc_port.
    """

    def __init__(self, binary, repo, *args, env=None, inherit=True, cwd=None, prefix=(), grpc=True,
                 wait=60, log_file=None):
        environment = dict(os.environ, NO_COLOR="1", RUST_LOG="info") if inherit else {}
        environment.update(env or {})
        serve = [] if repo is None else ["serve", "--listen", "127.0.0.1:0", "--model-repository", repo]
        command = [os.fspath(a) for a in (*prefix, binary, *serve, *args)]
        self.url = self.host = self.port = None
        self.grpc = self.grpc_host = self.grpc_port = None
        self.log = []
        self._want_grpc = grpc
        self._addressed = threading.Event()
        self._local = threading.local()
        self._connections = []
        self._lock = threading.Lock()
        # One pipe for both streams, read all the time: the server never blocks on a full one.
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment,
                                     cwd=cwd, text=True, errors="replace")
        sink = open(log_file, "w") if log_file else None
        self._reader = threading.Thread(target=self._read, args=(sink,), daemon=True)
        self._reader.start()
        if wait and not self.started(wait):
            self.proc.kill()
            self.proc.wait()
            self._reader.join(timeout=5)
            raise RuntimeError(f"the server did not log its address{'es' if grpc else ''} "
                               f"(exit status {self.proc.returncode}):\n" + "".join(self.log[-40:]))

    def _read(self, sink):
        for line in self.proc.stdout:
            line = ANSI.sub("", line)
            if sink:
                sink.write(line)
                sink.flush()
            self.log.append(line)
            if len(self.log) > LOG_LINES:
                del self.log[:LOG_LINES // 5]
            if self.grpc is None and (m := GRPC_LINE.search(line)):
                self.grpc_host, self.grpc_port = _host_port(m.group(1))
                self.grpc = m.group(1)
            elif self.url is None and (m := HTTP_LINE.search(line)):
                self.host, self.port = _host_port(m.group(1))
                self.url = m.group(1)
            if self.url and (self.grpc or not self._want_grpc):
                self._addressed.set()
        if sink:
            sink.close()
        self._addressed.set()

    def started(self, timeout=60):
        """Waits until the log names the addresses, or the server has exited; whether it named
        them."""
        self._addressed.wait(timeout)
        return bool(self.url and (self.grpc or not self._want_grpc))

    def wait_ready(self, models=(), path="/v2/health/ready", timeout=120):
        """Polls `path`, then each model's ready endpoint, until it answers 200, each poll on a
        connection of its own. RuntimeError if the server exits first, or `timeout` s pass."""
        deadline = time.time() + timeout
        for p in [path] + [f"/v2/models/{m}/ready" for m in models]:
            url = f"http://{self.url}{p}"
            ready = wait_for(lambda: answers_200(url) or not self.alive(), deadline - time.time(), 0.05)
            if not self.alive():
                raise RuntimeError(f"the server exited while starting (status {self.proc.returncode}):\n"
                                   + "".join(self.log[-20:]))
            if not ready:
                raise RuntimeError(f"the server never answered 200 on {p} within {timeout} s")

    def call(self, method, path, body=None, headers=None):
        """One request on this thread's keep-alive connection: (status, headers by lower-case
        name, answer: parsed JSON, else the text, None when empty). A body other than bytes is
        sent as JSON. A kept connection the server has closed while idle is reopened once; any
        other error (OSError, http.client.HTTPException) is raised."""
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data is not None else {}
        sent.update(headers or {})
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            reused = conn is not None
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=CALL_TIMEOUT_S)
                with self._lock:
                    self._connections.append(conn)
            try:
                conn.request(method, path, body=data, headers=sent)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, OSError) as e:
                conn.close()
                self._local.conn = None
                idle_close = isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))
                if attempt or not reused or not idle_close:
                    raise
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = raw.decode(errors="replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, answer

    def ok(self, method, path, body=None):
        """`call` for a request that must answer 200: (headers, answer); RuntimeError if not."""
        status, headers, answer = self.call(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path} answered {status}: {answer}")
        return headers, answer

    def metrics(self):
        """Every series of its /metrics: {'name{labels}': value}."""
        return metrics(self.url)

    def metric(self, name, **labels):
        """The sum of the series of `name` whose labels include these (all of them if none)."""
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        return sum(value for series, value in self.metrics().items()
                   if series.partition("{")[0] == name and all(w in series for w in wanted))

    def status(self, key):
        """A line of /proc/<pid>/status in bytes (VmRSS, VmHWM)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def rss(self):
        return self.status("VmRSS")

    def reset_peak(self):
        """Makes VmHWM start again from the current RSS (Linux: clear_refs 5)."""
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def peak(self):
        return self.status("VmHWM")

    def alive(self):
        return self.proc.poll() is None

    def _close_connections(self):
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def stop(self, timeout=60):
        """SIGTERM, and SIGKILL if it has not exited within `timeout` s; its exit status (-9 when
        killed), with the log read to the end. The check's own keep-alive connections are closed
        first, so that none of them holds the graceful shutdown."""
        self._close_connections()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode

    def kill(self):
        """SIGKILL (a crash); its exit status, with the log read to the end."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        return self.proc.returncode
