"""Errors a user sees. Each one renders as a single line that names the file and the problem."""

from __future__ import annotations

from pathlib import Path


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
