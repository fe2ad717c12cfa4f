"""Headless Chromium driven over the DevTools protocol (a pipe, no extra package), with the
network off: what a person sees of a page, its console, and every request it made.

    with Browser() as b:
        page = b.open(Path("report.html"))
        page.evaluate("document.title"); page.screenshot(Path("shot.png"))
        page.errors, page.requests

Chromium reads protocol messages from fd 3 and answers on fd 4 (``--remote-debugging-pipe``),
each message JSON ending in a NUL byte. It runs inside ``unshare --net`` (a network namespace
with no interface up), so no request could leave the machine even if the page asked.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    return next((p for p in map(shutil.which, BINARIES) if p), None)


def network_namespace_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    done = subprocess.run([unshare, "--net", "true"], capture_output=True, timeout=10)
    return done.returncode == 0


class Page:
    """One tab: evaluate script, take a screenshot; ``errors`` and ``requests`` fill as the
    browser reports console errors, uncaught exceptions and network requests."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session
        self.errors: list[str] = []
        self.requests: list[str] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.call(method, params, self.session)

    def evaluate(self, expression: str) -> Any:
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in answer:
            raise AssertionError(f"{expression!r} raised: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def screenshot(self, path: Path, width: int = 1200) -> bytes:
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        data = base64.b64decode(shot["data"])
        path.write_bytes(data)
        return data


class Browser:
    def __init__(self, timeout: float = 60.0) -> None:
        binary = chromium()
        assert binary, "no chromium on PATH (.ci/run installs Debian's chromium)"
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="trainjob-chromium-")
        ours_in, self.to_browser = os.pipe()  # chromium reads fd 3
        self.from_browser, ours_out = os.pipe()  # and writes fd 4
        args = [
            binary,
            "--headless",
            "--remote-debugging-pipe",
            "--no-sandbox",  # as root in CI; the page is our own file
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            ["unshare", "--net", *args] if network_namespace_works() else args,
            pass_fds=(3, 4),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: (os.dup2(ours_in, 3), os.dup2(ours_out, 4)),
        )
        os.close(ours_in)
        os.close(ours_out)
        self.next_id = 0
        self.buffer = b""
        self.pages: dict[str, Page] = {}

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone: nothing to close
            self.call("Browser.close", {})
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.to_browser, self.from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self.buffer:
            assert time.monotonic() < deadline, "chromium did not answer in time"
            chunk = os.read(self.from_browser, 1 << 16)
            assert chunk, f"chromium exited: {self.proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def _event(self, message: dict[str, Any]) -> None:
        page = self.pages.get(message.get("sessionId", ""))
        if page is None:
            return
        method, params = message["method"], message.get("params", {})
        if method == "Runtime.exceptionThrown":
            page.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            page.errors.append(json.dumps(params["args"])[:500])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            page.errors.append(params["entry"].get("text", "")[:500])
        elif method == "Network.requestWillBeSent":
            page.requests.append(params["request"]["url"])
        elif method == "Page.loadEventFired":
            page.loaded = True  # type: ignore[attr-defined]

    def call(self, method: str, params: dict[str, Any], session: str | None = None) -> Any:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if "id" not in answer:
                self._event(answer)
                continue
            if answer["id"] == self.next_id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer.get("result", {})

    def open(self, path: Path) -> Page:
        """A new tab showing ``path``, after its load event, with console and network watched."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, session)
        page.loaded = False  # type: ignore[attr-defined]
        self.pages[session] = page
        for domain in ("Runtime", "Log", "Network", "Page"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=path.resolve().as_uri())
        deadline = time.monotonic() + self.timeout
        while not page.loaded:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, f"{path} did not load"
            self._event(self._read())
        return page
