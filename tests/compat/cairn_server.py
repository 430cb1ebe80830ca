"""The cairn binary as a child process for the Python checks: started on free ports (the log
names both addresses), its memory read from /proc, stopped with SIGTERM."""

import os
import re
import subprocess
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Server:
    def __init__(self, binary, repo, *args, env=None):
        environment = dict(os.environ, NO_COLOR="1", RUST_LOG="info")
        environment.update(env or {})
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--model-repository", repo, *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=environment,
            text=True,
        )
        self.url = self.grpc = None
        self.log = []
        for _ in range(200):
            line = re.sub(r"\x1b\[[0-9;]*m", "", self.proc.stderr.readline())
            self.log.append(line)
            if m := re.search(r"listening on http://(\S+)", line):
                self.url = m.group(1)
            if m := re.search(r"gRPC listening on (\S+)", line):
                self.grpc = m.group(1)
            if self.url and self.grpc:
                break
        if not (self.url and self.grpc):
            self.proc.kill()
            raise RuntimeError("the server did not log both addresses:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()
        host, port = self.url.rsplit(":", 1)
        self.host, self.port = host, int(port)
        ghost, gport = self.grpc.rsplit(":", 1)
        self.grpc_host, self.grpc_port = ghost, int(gport)

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)
            if len(self.log) > 5000:
                del self.log[:1000]

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server never became ready")

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

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
