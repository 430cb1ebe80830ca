"""The HTML pages in a real browser: headless Chromium draws the status page and a live drift
report, with JavaScript on and off, and every screenshot must show the page.

Run: python tests/compat/check_pages.py [path/to/cairn]   (default: target/release/cairn;
`chromium` on PATH, Debian package `chromium`). Standard library only.

1. A temporary copy of models/iris with monitoring on (a baseline from the first rows, small
   drift and quality windows), served on a free port.
2. Traffic: baseline rows, then rows with two features shifted, so that a drift window closes
   with violations; feedback for some rows, so that live quality has windows.
3. The pages over HTTP: HTML, no script, nothing referenced elsewhere, the feature names there.
4. Headless Chromium loads `/` and the report, once as is and once with JavaScript disabled
   (first proven off on a page whose script would turn it red), and takes screenshots. Each PNG is decoded here (zlib and struct, no imaging library) and must
   be the page: enough pixels off the background, many colours, and the colours the page draws
   with (the header, the chart bars, the READY badge) present.

Exits non-zero with every failure listed. With CHECK_PAGES_KEEP=<dir> the screenshots are kept
there for a look.
"""

import base64
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import FAILURES, check, finish  # noqa: E402
from cairn_server import ROOT, Server  # noqa: E402

BINARY = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "cairn")

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
WINDOW = "1280,1600"

# Colours the pages draw with (see crates/monitor/src/html.rs): the header bar, the baseline
# and window bars of the histograms, and the green READY / OK badge.
HEADER = (0x1D, 0x24, 0x33)
BASELINE_BAR = (0x8F, 0xA8, 0xC8)
WINDOW_BAR = (0xE0, 0x7B, 0x39)
GOOD_BADGE = (0x2E, 0x7D, 0x32)



# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------

def start_server(repo, state_dir):
    server = Server(BINARY, repo, "--state-dir", state_dir, "--prediction-log-fsync-ms", "0")
    try:
        server.wait_ready(["iris"])
    except RuntimeError as e:
        server.stop()
        sys.exit(str(e))
    return server


def rows(n, seed, shift):
    """Rows near iris's; `shift` moves petal length, and sepal width a little, far off."""
    out = []
    for i in range(n):
        k = float(i + seed)
        out.append([5.0 + math.sin(k * 0.37), 3.0 + math.cos(k * 0.11) * 0.4 + 0.3 * shift,
                    3.5 + math.sin(k * 0.23) * 2.0 + shift, 1.2 + math.cos(k * 0.53) * 0.8])
    return out


def traffic(server, prefix, requests, shift):
    """Requests of 10 rows to the deployment; returns [(id, row, predicted label)]."""
    predicted = []
    for i in range(requests):
        rid = f"{prefix}{i}"
        data = [x for row in rows(10, i * 10, shift) for x in row]
        body = {"id": rid, "inputs": [{"name": "input", "shape": [10, 4], "datatype": "FP32", "data": data}]}
        status, _, answer = server.call("POST", "/v2/models/iris/infer", body)
        if status != 200:
            sys.exit(f"inference answered {status}: {str(answer)[:200]!r}")
        labels = next(o["data"] for o in answer["outputs"] if o["name"] == "label")
        predicted.extend((rid, row, label) for row, label in enumerate(labels))
    return predicted


IRIS_MONITORING = f"""
[monitoring]
enabled = true
features = {json.dumps(FEATURES)}
prediction = "label"
baseline_rows = 200
window_rows = 200
quality_window_rows = 20
"""


def drive(server):
    """Sends the traffic and feedback; returns once a drift window has closed."""
    predicted = traffic(server, "base-", 20, 0.0)
    predicted += traffic(server, "moved-", 20, 2.5)
    deadline = time.time() + 60
    while True:
        status, _, drift = server.call("GET", "/v2/models/iris/drift")
        if status != 200:
            sys.exit(f"GET /drift answered {status}: {str(drift)[:200]!r}")
        versions = drift["versions"]
        reports = [r for v in versions.values() for r in v["reports"]]
        if reports:
            break
        if time.time() > deadline:
            sys.exit("no drift window closed within 60 s")
        time.sleep(0.1)
    report = reports[-1]
    check(report["rows"] == 200, f"the window holds {report['rows']} rows, not 200")
    check(bool(report["drifted"]), f"the shifted window did not drift: {report['drifted']}")
    # Feedback in calls of 20 (each closes a quality window) and one of 10 that stays open;
    # every fourth label is wrong, so quality is not a flat line at 1.
    items = [{"id": rid, "row": row, "label": (label + 1) % 3 if n % 4 == 0 else label}
             for n, (rid, row, label) in enumerate(predicted[:70])]
    for start in range(0, len(items), 20):
        status, _, answer = server.call("POST", "/v2/models/iris/feedback", {"feedback": items[start:start + 20]})
        check(status == 200, f"feedback answered {status}: {str(answer)[:200]!r}")
    return report


def check_html(name, server, path, must_have):
    status, headers, text = server.call("GET", path)
    if not check(status == 200, f"{name}: GET {path} answered {status}: {str(text)[:200]!r}"):
        return
    check(headers.get("content-type") == "text/html; charset=utf-8",
          f"{name}: content-type {headers.get('content-type')!r}")
    check(headers.get("content-security-policy", "").startswith("default-src 'none'"),
          f"{name}: no strict Content-Security-Policy: {headers.get('content-security-policy')!r}")
    lower = text.lower()
    check("<script" not in lower, f"{name}: the page has a <script>")
    elsewhere = lower.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for ref in ("http://", "https://", "<link", "<img", "url(", "@import"):
        check(ref not in elsewhere, f"{name}: the page references {ref!r}")
    for needle in must_have:
        check(needle in text, f"{name}: {needle!r} is not on the page")


# --------------------------------------------------------------------------------------------
# PNG, decoded by hand
# --------------------------------------------------------------------------------------------

def decode_png(path):
    """(width, height, channels, pixel bytes) of an 8-bit non-interlaced PNG."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("no IHDR")
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace != 0:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    out = bytearray(height * stride)
    prev = bytearray(stride)
    src = 0
    for y in range(height):
        kind = raw[src]
        line = bytearray(raw[src + 1:src + 1 + stride])
        src += 1 + stride
        if kind == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif kind == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b = prev[i]
                c = prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        elif kind != 0:
            raise ValueError(f"bad filter type {kind} on row {y}")
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, channels, bytes(out)


def rgb_counts(width, height, channels, pixels):
    """How many pixels have each (r, g, b)."""
    counts = {}
    if channels >= 3:
        step = channels
        for i in range(0, len(pixels), step):
            key = pixels[i:i + 3]
            counts[key] = counts.get(key, 0) + 1
    else:
        for i in range(0, len(pixels), channels):
            g = pixels[i:i + 1] * 3
            counts[g] = counts.get(g, 0) + 1
    return {tuple(k): v for k, v in counts.items()}


def near(counts, colour, tolerance=6):
    return sum(n for c, n in counts.items() if all(abs(a - b) <= tolerance for a, b in zip(c, colour)))


def check_screenshot(name, png, colours):
    try:
        width, height, channels, pixels = decode_png(png)
    except (OSError, ValueError, zlib.error) as e:
        check(False, f"{name}: the screenshot does not decode: {e}")
        return
    w, h = (int(x) for x in WINDOW.split(","))
    check((width, height) == (w, h), f"{name}: screenshot is {width}x{height}, not {w}x{h}")
    counts = rgb_counts(width, height, channels, pixels)
    total = width * height
    background, most = max(counts.items(), key=lambda kv: kv[1])
    drawn = 1 - most / total
    print(f"  {name}: {width}x{height}, {len(counts)} colours, {drawn:.1%} off the background "
          f"{'#%02x%02x%02x' % background}")
    check(drawn >= 0.05, f"{name}: only {drawn:.2%} of the pixels differ from the background: blank?")
    check(len(counts) >= 32, f"{name}: only {len(counts)} distinct colours: blank?")
    for label, colour, least in colours:
        found = near(counts, colour)
        check(found >= least, f"{name}: {found} pixels of the {label} colour "
                              f"{'#%02x%02x%02x' % colour}, expected at least {least}")


# --------------------------------------------------------------------------------------------
# Chromium, driven over the DevTools protocol
# --------------------------------------------------------------------------------------------
#
# `chromium --headless --screenshot=<png>` would do for JavaScript on, but with
# `--blink-settings=scriptEnabled=false` it writes no file at all (Chromium 156), so both runs
# go through the DevTools protocol instead: a page target, scripts disabled for the JavaScript-
# off run (by the flag and by `Emulation.setScriptExecutionDisabled`), navigate, wait for the
# load event, `Page.captureScreenshot`. The WebSocket client below is the few lines that needs.

class DevTools:
    """A minimal WebSocket (RFC 6455) client for one DevTools target."""

    def __init__(self, ws_url, timeout=60):
        url = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {url.path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = bytearray()
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\r\n\r\n")
        status = bytes(self.buf[:end]).split(b"\r\n")[0]
        del self.buf[:end + 4]
        if b" 101 " not in status:
            raise ConnectionError(f"DevTools refused the WebSocket: {status!r}")
        self.next_id = 0
        self.events = []

    def close(self):
        self.sock.close()

    def _fill(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("DevTools closed the connection")
        self.buf += chunk

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _send(self, opcode, payload):
        n = len(payload)
        head = bytearray([0x80 | opcode])
        if n < 126:
            head.append(0x80 | n)
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(bytes(head) + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload)))

    def _message(self):
        parts = []
        while True:
            b0, b1 = self._take(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._take(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._take(8))[0]
            mask = self._take(4) if b1 & 0x80 else None
            data = self._take(n)
            if mask:
                data = bytes(b ^ mask[i & 3] for i, b in enumerate(data))
            opcode = b0 & 0x0F
            if opcode == 8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode == 9:
                self._send(0xA, data)
                continue
            if opcode in (0, 1, 2):
                parts.append(data)
                if b0 & 0x80:
                    return json.loads(b"".join(parts))

    def call(self, method, **params):
        self.next_id += 1
        me = self.next_id
        self._send(0x1, json.dumps({"id": me, "method": method, "params": params}).encode())
        while True:
            msg = self._message()
            if msg.get("id") == me:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method, timeout):
        deadline = time.time() + timeout
        while True:
            for i, msg in enumerate(self.events):
                if msg.get("method") == method:
                    return self.events.pop(i)
            if time.time() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self.events.append(self._message())


def screenshot(chromium, url, png, profile, javascript):
    """Loads `url` in a fresh headless Chromium and writes its screenshot to `png`."""
    width, height = (int(x) for x in WINDOW.split(","))
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={WINDOW}",
            "--remote-debugging-port=0"]
    if not javascript:
        args.append("--blink-settings=scriptEnabled=false")
    args.append("about:blank")
    log_path = os.path.join(profile, "chromium.log")
    with open(log_path, "w") as log:
        browser = subprocess.Popen(args, stdout=log, stderr=log)
    devtools = None
    try:
        # Chromium writes the port it chose here once DevTools listens.
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.time() + 60
        target = None
        while target is None:
            if browser.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"chromium did not start DevTools (exit {browser.poll()})")
            try:
                with open(port_file) as f:
                    port = int(f.readline())
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                target = pages[0]["webSocketDebuggerUrl"] if pages else None
            except (OSError, ValueError, urllib.error.URLError):
                pass
            if target is None:
                time.sleep(0.1)
        devtools = DevTools(target)
        devtools.call("Page.enable")
        if not javascript:
            devtools.call("Emulation.setScriptExecutionDisabled", value=True)
        devtools.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        devtools.call("Page.navigate", url=url)
        devtools.wait_event("Page.loadEventFired", 60)
        time.sleep(0.5)  # a frame or two for layout and paint
        shot = devtools.call("Page.captureScreenshot", format="png")
        with open(png, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return True
    except (OSError, RuntimeError, TimeoutError, ConnectionError, KeyError, ValueError) as e:
        with open(log_path, errors="replace") as f:
            tail = "".join(l for l in f.readlines() if "dbus" not in l)[-800:]
        check(False, f"chromium could not capture {url} (JavaScript {'on' if javascript else 'off'}): "
                     f"{e}\n{tail}")
        return False
    finally:
        if devtools is not None:
            devtools.close()
        browser.terminate()
        try:
            browser.wait(timeout=30)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()


# A page whose script turns it red: red with JavaScript on, white with it off. It proves that
# the JavaScript-off run really runs none (and the JavaScript-on run does).
CANARY = ("data:text/html,<html><body style='margin:0;background:%23ffffff'>"
          "<script>document.body.style.background='%23ff0000'</script></body></html>")


def check_canary(chromium, work):
    for javascript in (True, False):
        png = os.path.join(work, f"canary-{javascript}.png")
        if not screenshot(chromium, CANARY, png, tempfile.mkdtemp(prefix="profile-", dir=work), javascript):
            continue
        try:
            width, height, channels, pixels = decode_png(png)
        except (OSError, ValueError, zlib.error) as e:
            check(False, f"the canary screenshot does not decode: {e}")
            continue
        red = near(rgb_counts(width, height, channels, pixels), (255, 0, 0), 2) / (width * height)
        if javascript:
            check(red > 0.9, f"with JavaScript on the canary script did not run ({red:.0%} red)")
        else:
            check(red == 0, f"with JavaScript off the canary script ran ({red:.0%} red)")


def main():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (Debian: apt-get install chromium); the pages "
                 "cannot be checked in a browser")
    if not os.path.exists(BINARY):
        sys.exit(f"no server binary at {BINARY}")
    work = tempfile.mkdtemp(prefix="check-pages-")
    server = None
    try:
        repo = os.path.join(work, "repo")
        shutil.copytree(os.path.join(ROOT, "models", "iris"), os.path.join(repo, "iris"))
        path = os.path.join(repo, "iris", "config.toml")
        with open(path) as f:
            shipped = f.read()
        # This check sets its own monitoring (a baseline from the first rows, small windows).
        kept, skipping = [], False
        for line in shipped.splitlines():
            if line.startswith("["):
                skipping = line.startswith("[monitoring")
            if not skipping:
                kept.append(line)
        for v in ("1", "2"):
            baseline = os.path.join(repo, "iris", v, "baseline.json")
            if os.path.exists(baseline):
                os.remove(baseline)
        with open(path, "w") as f:
            f.write("\n".join(kept) + "\n" + IRIS_MONITORING)
        server = start_server(repo, os.path.join(work, "state"))
        base = f"http://{server.url}"
        print(f"== server on {base}")
        report = drive(server)
        print(f"  drift window closed: {report['rows']} rows, drifted {report['drifted']}")

        report_path = "/v2/models/iris/drift/report"
        check_html("status page", server, "/", ["iris", "READY", report_path])
        check_html("drift report", server, report_path,
                   FEATURES + ["DRIFTED", "VIOLATED", "<svg", "Live quality", "accuracy"])

        print(f"== chromium ({chromium})")
        check_canary(chromium, work)
        pages = [
            ("status page", "/", [("header", HEADER, 2000), ("READY badge", GOOD_BADGE, 100)]),
            ("drift report", report_path,
             [("header", HEADER, 2000), ("baseline bar", BASELINE_BAR, 500),
              ("window bar", WINDOW_BAR, 500)]),
        ]
        for name, path, colours in pages:
            for javascript in (True, False):
                label = f"{name}, JavaScript {'on' if javascript else 'off'}"
                png = os.path.join(work, re.sub(r"\W+", "-", label) + ".png")
                profile = tempfile.mkdtemp(prefix="profile-", dir=work)
                if screenshot(chromium, base + path, png, profile, javascript):
                    check_screenshot(label, png, colours)
                    keep = os.environ.get("CHECK_PAGES_KEEP")
                    if keep:
                        os.makedirs(keep, exist_ok=True)
                        shutil.copy(png, keep)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    finish("pages in chromium: every screenshot shows the page, with JavaScript on and off", "failure(s)")


if __name__ == "__main__":
    main()
