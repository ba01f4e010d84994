"""Errors that the command line reports as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class IagbenchError(Exception):
    """Base class of every error a user can cause and fix."""


class DataError(IagbenchError):
    """A malformed record in an input file: names the file, the line and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


class UnknownNameError(IagbenchError):
    """A component name that no plugin registered."""


class ConfigurationError(IagbenchError):
    """Options that do not fit together (an imaginer the reader cannot read, bad k=v text...)."""


class RunFolderError(IagbenchError):
    """A run folder that belongs to another configuration or is damaged beyond repair."""


class ProcessesError(IagbenchError):
    """Another process of a multi-process run stopped or stalled (its files did not appear in time)."""
