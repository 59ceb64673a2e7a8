"""What a run tells the person watching it: plain lines in logs, one rewritten line on a terminal."""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, film: str):
        self.film = film
        self.terminal = sys.stderr.isatty()

    def say(self, message: str, final: bool = True) -> None:
        if self.terminal:
            print(f"\r\033[K{self.film}: {message}", end="\n" if final else "", file=sys.stderr, flush=True)
        else:  # a log (ray job logs, the dashboard): every step on a line of its own
            print(f"{self.film}: {message}", file=sys.stderr, flush=True)
