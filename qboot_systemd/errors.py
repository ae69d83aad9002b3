"""User errors: one line with a hint, never a traceback."""

from __future__ import annotations

import sys


class UserError(Exception):
    def __init__(self, message: str, hint: str | None = None, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status

    def report(self, program: str) -> int:
        print(f"{program}: error: {self.message}", file=sys.stderr)
        if self.hint:
            print(f"{program}: hint: {self.hint}", file=sys.stderr)
        return self.status
