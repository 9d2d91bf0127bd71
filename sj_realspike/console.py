"""Console conventions of the command-line tools: one-line errors, log lines on stderr, tables.

Errors are a single ``sj-realspike: error: …`` line with exit status 2, argument errors
included (usage stays in ``--help``). The library only logs
(``logging.getLogger("sj_realspike.…")``); the ``sj-realspike`` commands and the demo
show those records, one line each, so that long steps say what they are doing where a
progress bar cannot (output that is not a terminal).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

__all__ = ["PREFIX", "OneLineParser", "error_line", "format_table", "log_to_stderr", "own_warnings_only",
           "positive_int"]

PREFIX = "sj-realspike"


def error_line(message: str) -> None:
    """Print ``message`` as the one ``sj-realspike: error:`` line on stderr (inner newlines folded)."""
    print(f"{PREFIX}: error: {' '.join(message.split())}", file=sys.stderr)


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one `error_line` and exit status 2."""

    def error(self, message: str) -> NoReturn:
        error_line(f"{message} (see {self.prog} --help)")
        raise SystemExit(2)


def positive_int(text: str) -> int:
    """An argparse type for counts (threads, time steps, epochs): an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@contextmanager
def log_to_stderr(level: int = logging.INFO) -> Iterator[None]:
    """Print the package's log records of ``level`` and above as ``sj-realspike: message`` lines on stderr.

    Does nothing if the application already configured logging (a handler on the root
    or the package logger), so a caller's setup wins; nesting is harmless.
    """
    package = logging.getLogger("sj_realspike")
    if package.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PREFIX}: %(message)s"))
    previous = package.level
    package.addHandler(handler)
    package.setLevel(level)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(previous)


@contextmanager
def own_warnings_only() -> Iterator[None]:
    """Show the package's own warnings as one ``sj-realspike: warning: …`` line each; drop all others.

    Third-party libraries warn about their own deprecations (``torch.jit.script``, Norse's
    imports) or about files they refuse (torch's two-line "Detected pickle protocol" before
    the error the tool reports anyway): noise on a command's stderr, where an error is one
    line. A warning is the package's when its category is defined in the package
    (``NotConvertedWarning``). The filters and ``showwarning`` are restored on exit.
    """
    def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        if category.__module__.split(".")[0] == __name__.split(".")[0]:
            print(f"{PREFIX}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)
