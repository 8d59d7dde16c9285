"""Errors a user sees. Each one renders as a single line that names the file and the problem."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


class SlimasrError(Exception):
    """Base class for every error slimasr reports to a user (the CLI prints it on one line)."""


class DataError(SlimasrError):
    """A problem with one input file: ``DataError(path, "problem")`` -> ``path: problem``."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")


class ConfigError(SlimasrError, ValueError):
    """A bad config file, preset, ``--key=value`` override or option value (also a ValueError,
    so library callers that catch a bad argument as ValueError still do)."""


def error_line(e: SlimasrError | OSError) -> str:
    """The one line a user sees for ``e``: a SlimasrError as it reads, an OSError (a read-only or
    full disk, a name too long, ...) as the file and the reason."""
    if isinstance(e, OSError) and not isinstance(e, SlimasrError):
        return f"error: {e.filename}: {e.strerror}" if e.filename else "error: " + " ".join(str(e).split())
    return f"error: {e}"


def run_script(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's ``main()`` (the benchmarks'), exiting with its status; a SlimasrError or
    OSError becomes one line on stderr and status 1, as in the CLI."""
    try:
        code = main()
    except (SlimasrError, OSError) as e:
        print(error_line(e), file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
