"""A few Chrome DevTools Protocol calls to headless Chromium, for the report's browser tests.

Chromium speaks the protocol over ``--remote-debugging-pipe``: JSON messages separated by
NUL bytes, read from the child's fd 3 and written to its fd 4. No websocket, no port, and
nothing beyond the standard library.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path


class Chromium:
    """A headless Chromium driven over the DevTools pipe; use as a context manager."""

    def __init__(self, binary: Path, profile: Path, timeout: float = 60.0):
        self.binary, self.profile, self.timeout = Path(binary), Path(profile), timeout
        self._events: list[dict] = []
        self._buffer = b""
        self._next_id = 0

    def __enter__(self) -> Chromium:
        child_reads, self._writer = os.pipe()
        self._reader, child_writes = os.pipe()

        def to_fds_3_and_4():
            # the child's fds 3 and 4, whatever numbers the pipe ends have here
            read_end, write_end = os.dup(child_reads), os.dup(child_writes)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self._process = subprocess.Popen(
            [str(self.binary), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=to_fds_3_and_4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(child_reads)
        os.close(child_writes)
        return self

    def __exit__(self, *exc_info) -> None:
        self._process.kill()
        self._process.wait()
        os.close(self._writer)
        os.close(self._reader)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._writer, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._events.append(reply)

    def wait_for(self, event: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for seen in self._events:
                if seen.get("method") == event:
                    return seen
            self._events.append(self._receive(deadline))

    def open(self, url: str) -> str:
        """Load ``url`` in a new page and return its session id once the page has loaded."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired")
        self.call("DOM.enable", session=session)
        self.call("CSS.enable", session=session)
        return session

    def fonts_of(self, session: str, selector: str) -> list[dict]:
        """The platform fonts that drew the text of the first node matching ``selector``."""
        root = self.call("DOM.getDocument", session=session)["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector}, session=session)["nodeId"]
        if not node:
            raise LookupError(f"no node matches {selector!r}")
        return self.call("CSS.getPlatformFontsForNode", {"nodeId": node}, session=session)["fonts"]

    def text_of(self, session: str, selector: str) -> str:
        expression = f"document.querySelector({json.dumps(selector)}).textContent"
        return self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                         session=session)["result"]["value"]

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._reader], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._reader, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)
