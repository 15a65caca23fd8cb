"""Open a page in headless Chromium through the DevTools protocol over a pipe.

``--remote-debugging-pipe`` speaks the protocol as NUL-terminated JSON on file descriptors
3 (to the browser) and 4 (from it): no port, no websocket client, no pip package. Unlike
``--dump-dom`` with ``--enable-logging`` (which logs every console message at one level),
the protocol says which messages are errors, reports uncaught exceptions and failed loads,
lists every request the page makes, and takes screenshots.

``python -m tests.browser PAGE.html SHOT.png`` saves a screenshot (the README's).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-pipe",
)  # fmt: skip


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class Page:
    """What a page did while it loaded."""

    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    values: dict[str, Any] = field(default_factory=dict)  # expression -> its value
    screenshot: bytes = b""


class _Pipe:
    def __init__(self, to_browser: int, from_browser: int) -> None:
        self.out, self.inp = to_browser, from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})  # type: ignore[no-any-return]
            self.events.append(reply)

    def receive(self, timeout: float = 60) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            # Wait with a deadline: a browser that stays alive but never answers must not
            # hang the test run.
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.inp], [], [], left)[0]:
                raise TimeoutError(f"Chromium sent nothing over the DevTools pipe for {timeout} s")
            chunk = os.read(self.inp, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)  # type: ignore[no-any-return]

    def wait_for(self, method: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} within {timeout} s")
            self.events.append(self.receive(left))


def open_page(
    chromium: str,
    url: str,
    expressions: tuple[str, ...] = (),
    width: int = 1200,
    height: int = 900,
    timeout: float = 60,
) -> Page:
    """Load *url*, evaluate each JavaScript *expression*, and take a screenshot of the
    top *width* x *height* pixels."""
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()

    def plumb() -> None:  # in the child: the protocol's fixed descriptors
        os.dup2(to_r, 3)
        os.dup2(from_w, 4)

    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=plumb, pass_fds=(3, 4),
        )  # fmt: skip
        os.close(to_r)
        os.close(from_w)
        pipe = _Pipe(to_w, from_r)
        try:
            return _visit(pipe, url, expressions, width, height, timeout)
        finally:
            with contextlib.suppress(RuntimeError, OSError):
                pipe.send("Browser.close")
            os.close(to_w)
            os.close(from_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _visit(
    pipe: _Pipe, url: str, expressions: tuple[str, ...], width: int, height: int, timeout: float
) -> Page:
    target = pipe.send("Target.createTarget", url="about:blank")["targetId"]
    session = pipe.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.send(f"{domain}.enable", session)
    pipe.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
              deviceScaleFactor=1, mobile=False)  # fmt: skip
    pipe.events.clear()
    pipe.send("Page.navigate", session, url=url)
    pipe.wait_for("Page.loadEventFired", timeout)
    page = Page()
    for text in expressions:
        result = pipe.send("Runtime.evaluate", session, expression=text, returnByValue=True)
        page.values[text] = result.get("result", {}).get("value")
    shot = pipe.send("Page.captureScreenshot", session, format="png")
    page.screenshot = base64.b64decode(shot["data"])
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            page.errors.append("console: " + " ".join(str(a.get("value", "")) for a in args))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            page.errors.append(
                "exception: " + str(details.get("exception", {}).get("description") or details)
            )
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            page.errors.append("log: " + params["entry"].get("text", ""))
        elif method == "Network.loadingFailed":
            page.errors.append(f"load failed: {params.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            page.requests.append(params.get("request", {}).get("url", ""))
    return page


if __name__ == "__main__":  # python -m tests.browser PAGE.html SHOT.png [WIDTH HEIGHT]
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no Chromium on PATH (apt-get install chromium)")
    size = [int(v) for v in sys.argv[3:5]] or [1000, 1400]
    page = open_page(chromium, Path(sys.argv[1]).absolute().as_uri(), (), *size)
    Path(sys.argv[2]).write_bytes(page.screenshot)
    print(f"{len(page.errors)} errors; wrote {sys.argv[2]} ({len(page.screenshot)} bytes)")
