"""What a step says while it runs: its lines through `logging` (results on stdout, warnings and
errors on stderr) and its progress bars on stderr; `quiet=true` keeps only warnings and errors."""

from __future__ import annotations

import logging
import sys


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def configure(quiet: bool) -> None:
    """The `pipeline` loggers' handlers: INFO lines on stdout, WARNING and above on stderr."""
    root = logging.getLogger("pipeline")
    root.handlers.clear()
    out, err = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    out.addFilter(_Below(logging.WARNING))
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def bars_disabled() -> bool | None:
    """tqdm's `disable`: always when quiet; else tqdm's own rule (on where the output is a terminal)."""
    return True if logging.getLogger("pipeline").getEffectiveLevel() > logging.INFO else None
