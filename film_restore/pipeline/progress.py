"""What a run tells the person watching it: on a terminal, one live bar per stage (frames done,
frames/s, time left); in logs (ray job logs, the dashboard), plain lines."""
from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, film: str):
        self.film = film
        self.terminal = sys.stderr.isatty()
        self._bar: tqdm | None = None

    def say(self, message: str) -> None:
        self._close_bar()
        print(f"{self.film}: {message}", file=sys.stderr, flush=True)

    def frames(self, stage: str, done: int, total: int) -> None:
        """How many of the film's frames a stage has finished."""
        if not self.terminal:
            print(f"{self.film}: {stage} {done}/{total} frames", file=sys.stderr, flush=True)
            return
        description = f"{self.film}: {stage}"
        if self._bar is None or self._bar.desc != description:
            self._close_bar()
            self._bar = tqdm(total=total, desc=description, unit="frame", file=sys.stderr, dynamic_ncols=True)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
