"""A headless Chromium driven over the Chrome DevTools Protocol, for testing the HTML reports in a
real browser: open a file:// page, wait for its load event, evaluate JavaScript, take a screenshot,
and collect every console message, uncaught exception, log entry and network request on the way.

Every wait has a deadline, and the browser's whole process group is killed on exit, so a broken
browser fails a test instead of hanging CI. Needs ``websocket-client`` (the ``test`` extra) and a
Chromium binary (``DEPTHLAB_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on PATH).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--no-default-browser-check",
         "--hide-scrollbars", "--mute-audio", "--remote-debugging-port=0")


def find_chromium() -> Optional[str]:
    """Path of a Chromium binary, or None."""
    env = os.environ.get("DEPTHLAB_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Chromium:
    """``with Chromium(path) as browser: page = browser.open(url)``; one tab, reused per ``open``."""

    def __init__(self, path: str, timeout: float = 30.0, width: int = 1200, height: int = 900):
        self.path, self.timeout, self.size = path, timeout, (width, height)
        self.proc: Optional[subprocess.Popen] = None
        self.ws = None
        self._next_id, self.events = 0, []

    # ------------------------------------------------------------------------ life cycle
    def __enter__(self) -> "Chromium":
        self.profile = Path(tempfile.mkdtemp(prefix="depthlab-chromium-"))
        self.stderr = open(self.profile.parent / f"{self.profile.name}.log", "w+b")
        try:
            self.proc = subprocess.Popen([self.path, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                         start_new_session=True)  # its own process group, killed as one
            port = self._devtools_port()
            self._connect(port)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.ws is not None:
                self.ws.close()
        finally:
            self._kill()
            self.stderr.close()
            os.unlink(self.stderr.name)
            shutil.rmtree(self.profile, ignore_errors=True)

    def _kill(self) -> None:
        """TERM, then KILL, the browser's process group (renderers, zygote and GPU helpers too)."""
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                continue
            deadline = time.monotonic() + 5
            while group_members(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not group_members(self.proc.pid):
                return

    def log_tail(self, n: int = 2000) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-n:]

    def _devtools_port(self) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            lines = marker.read_text().splitlines() if marker.exists() else []
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
            time.sleep(0.05)
        raise BrowserError(f"chromium wrote no DevToolsActivePort in {self.timeout:.0f} s:\n{self.log_tail()}")

    def _connect(self, port: int) -> None:
        import websocket  # websocket-client

        target = self._http_json(port, "/json/new?about:blank", method="PUT")
        # suppress_origin: Chromium refuses DevTools websockets that carry an Origin header
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=self.timeout,
                                              suppress_origin=True)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        w, h = self.size
        self.send("Emulation.setDeviceMetricsOverride", width=w, height=h, deviceScaleFactor=1, mobile=False)

    def _http_json(self, port: int, path: str, method: str = "GET"):
        from urllib.request import Request, urlopen

        with urlopen(Request(f"http://127.0.0.1:{port}{path}", method=method), timeout=self.timeout) as r:
            return json.loads(r.read())

    # ------------------------------------------------------------------------ protocol
    def send(self, method: str, timeout: Optional[float] = None, **params) -> dict:
        """One CDP command; returns its result. Events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        msg_id = self._next_id
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        msg = self._receive(lambda m: m.get("id") == msg_id, timeout, f"reply to {method}")
        if "error" in msg:
            raise BrowserError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    def wait_event(self, method: str, timeout: Optional[float] = None, since: int = 0) -> dict:
        """The first event ``method`` at or after index ``since`` of ``events``, waiting if needed."""
        for e in self.events[since:]:
            if e["method"] == method:
                return e
        return self._receive(lambda m: m.get("method") == method, timeout, f"event {method}")

    def _receive(self, done, timeout: Optional[float], what: str) -> dict:
        from websocket import WebSocketTimeoutException

        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"timed out waiting for the {what}")
            self.ws.settimeout(left)
            try:
                msg = json.loads(self.ws.recv())
            except WebSocketTimeoutException:
                raise BrowserError(f"timed out waiting for the {what}") from None
            if "method" in msg:
                self.events.append(msg)
            if done(msg):
                return msg

    # ------------------------------------------------------------------------ pages
    def open(self, url: str) -> "PageLoad":
        """Navigate to ``url`` and wait for its load event (every image decoded or failed)."""
        start = len(self.events)
        nav = self.send("Page.navigate", url=url)
        if nav.get("errorText"):
            raise BrowserError(f"navigating to {url}: {nav['errorText']}")
        self.wait_event("Page.loadEventFired", since=start)
        return PageLoad(self, url, start)

    def evaluate(self, expression: str):
        """Value of a JavaScript expression (JSON-serialisable), or BrowserError with the exception."""
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise BrowserError(f"evaluating JavaScript: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path, full_page: bool = True, max_height: int = 16000) -> Path:
        """A PNG of the page (the whole page, up to ``max_height`` CSS pixels)."""
        params = {"format": "png"}
        if full_page:
            m = self.send("Page.getLayoutMetrics")
            size = m.get("cssContentSize") or m["contentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": max(1, size["width"]),
                                "height": max(1, min(size["height"], max_height)), "scale": 1})
        data = base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


class PageLoad:
    """What happened while one page loaded (and afterwards, until the next ``open``)."""

    def __init__(self, browser: Chromium, url: str, start: int):
        self.browser, self.url, self.start = browser, url, start

    def _events(self, method: str) -> List[dict]:
        return [e["params"] for e in self.browser.events[self.start:] if e["method"] == method]

    def messages(self) -> List[dict]:
        """Console calls, uncaught exceptions, browser log entries and failed loads, each as
        ``{"level": "error" | "warning" | ..., "source": ..., "text": ...}``."""
        out = []
        for p in self._events("Runtime.consoleAPICalled"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            level = {"assert": "error", "warning": "warning", "error": "error"}.get(p["type"], p["type"])
            out.append({"level": level, "source": f"console.{p['type']}", "text": text})
        for p in self._events("Runtime.exceptionThrown"):
            d = p["exceptionDetails"]
            out.append({"level": "error", "source": "exception",
                        "text": d.get("exception", {}).get("description") or d.get("text", "")})
        for p in self._events("Log.entryAdded"):
            e = p["entry"]
            out.append({"level": e["level"], "source": f"log.{e['source']}",
                        "text": f"{e['text']} {e.get('url', '')}".rstrip()})
        for p in self._events("Network.loadingFailed"):
            out.append({"level": "error", "source": "network", "text": f"failed to load: {p.get('errorText')}"})
        return out

    def errors(self) -> List[str]:
        return [f"{m['source']}: {m['text']}" for m in self.messages() if m["level"] == "error"]

    def requested_urls(self) -> List[str]:
        return [p["request"]["url"] for p in self._events("Network.requestWillBeSent")]


def group_members(pgid: int) -> List[int]:
    """Live (not zombie) processes of process group ``pgid``, from Linux /proc; [] elsewhere."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields after the name: state ppid pgrp ...
            out.append(int(d.name))
    return out
