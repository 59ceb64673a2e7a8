"""Headless Chromium for the page tests, driven over the DevTools protocol on a pipe (no extra package).

Chromium's --remote-debugging-pipe reads commands on its file descriptor 3 and writes replies and
events on 4, each a JSON message ended by a NUL byte. `Browser` opens one page, collects every
console error, exception and failed load, evaluates JavaScript and takes screenshots.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "chromium is not installed (install.sh installs Debian's chromium where apt-get runs as root)"
# Chromium as root in a sandboxed container, with no network: what it needs to start and not call out.
FLAGS = ("--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-quic", "--hide-scrollbars", "--force-device-scale-factor=1", "--mute-audio",
         "--autoplay-policy=no-user-gesture-required", "--remote-debugging-pipe")


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page. Use as a context manager."""

    def __init__(self, profile: Path, size: tuple[int, int] = (1280, 900), timeout: float = 60.0):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]
        if os.geteuid() == 0:
            command.append("--no-sandbox")  # chromium refuses to run as root with its sandbox
        # bash puts our pipe ends on descriptors 3 and 4, where --remote-debugging-pipe expects them (dash cannot
        # redirect descriptors above 9).
        profile.mkdir(parents=True, exist_ok=True)
        self._log = profile / "chromium.log"  # a file, not a pipe: chromium may write more than a pipe holds
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen(
                ["bash", "-c", f'exec "$@" 3<&{to_browser_read} 4>&{from_browser_write}', "chromium", *command],
                pass_fds=(to_browser_read, from_browser_write), stdout=subprocess.DEVNULL, stderr=log)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self.timeout = timeout
        self.size = size
        self.errors: list[str] = []
        self._buffer = b""
        self._next_id = 0
        self._session = None
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": size[0], "height": size[1], "deviceScaleFactor": 1,
                                                          "mobile": False})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.send("Browser.close", session=False)
                self._process.wait(timeout=10)
            except (BrowserError, OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        for descriptor in (self._to_browser, self._from_browser):
            try:
                os.close(descriptor)
            except OSError:
                pass

    # ---- protocol

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise BrowserError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise BrowserError(f"chromium closed its pipe: {self._log.read_text(errors='replace')[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        event = json.loads(message)
        self._note(event)
        return event

    def _note(self, event: dict) -> None:
        """Keeps what a page should never produce: console errors, uncaught exceptions, failed loads."""
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}")
        elif method == "Page.loadEventFired":
            self._loaded = True

    # ---- page

    def open(self, url: str) -> None:
        self._loaded = False
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + self.timeout
        while not self._loaded:
            self._receive(deadline)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (awaited if it is a promise)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        """Polls a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"not true after {timeout} s: {expression}")
            time.sleep(0.1)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page (its whole height when full_page)."""
        params = {"format": "png"}
        if full_page:
            width, height = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": max(width, self.size[0]),
                                                            "height": height, "scale": 1})
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))
        return path


def artifact_folder(tmp_path: Path) -> Path:
    """Where a test leaves what a person should look at: $FILM_RESTORE_ARTIFACTS, else the test's tmp_path."""
    folder = Path(os.environ.get("FILM_RESTORE_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_review_page(browser: Browser, html: Path, tracks: int) -> dict:
    """Opens a run's review page, opens every track and waits until its pictures have loaded and its loops have
    played for a moment. Returns what the page shows: timeline bars and cards per track id, every picture's natural
    width, and per loop its time and frames decoded."""
    browser.open(html.resolve().as_uri())
    browser.evaluate("document.getElementById('open-all').click()")
    browser.wait_for(f"document.querySelectorAll('details.track[open] .body').length === {tracks}")
    browser.wait_for("[...document.images].every((image) => image.complete)")
    browser.wait_for("[...document.querySelectorAll('video')].every((video) => video.currentTime > 0.2)")
    return browser.evaluate("""({
        bars: [...document.querySelectorAll('#timeline .track-bar')].map((bar) => bar.dataset.id),
        cards: [...document.querySelectorAll('details.track')].map((card) => card.dataset.id),
        images: [...document.images].map((image) => [image.getAttribute('src'), image.naturalWidth]),
        videos: [...document.querySelectorAll('video')].map((video) => ({
            src: video.getAttribute('src'), time: video.currentTime, paused: video.paused,
            frames: video.getVideoPlaybackQuality().totalVideoFrames, width: video.videoWidth})),
    })""")


def shown_cards(browser: Browser) -> list[str]:
    """The ids of the track cards the filters leave shown."""
    return browser.evaluate("[...document.querySelectorAll('details.track')].filter((card) => !card.hidden).map((card) => card.dataset.id)")


def click_filter(browser: Browser, group: str, value: str) -> None:
    """Clicks the checkbox of a flag ("flag-filters") or an actor ("actor-filters", "" for strangers)."""
    browser.evaluate(f"document.querySelector('#{group} input[value={json.dumps(value)}]').click()")
