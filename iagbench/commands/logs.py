"""Messages of the `iagbench` commands through `logging`: INFO by default, ``-v`` for DEBUG, ``-q`` for warnings only."""

from __future__ import annotations

import logging
import sys

LOGGER = "iagbench"
LOGGERS = (LOGGER, "iagbench_plugins")  # the core's and the built-in plugins' messages


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message is emitted (tests and callers may redirect it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def configure(verbose: int = 0, quiet: int = 0) -> logging.Logger:
    """Set up the ``iagbench`` and ``iagbench_plugins`` loggers (idempotent); return the first."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(handler, _CurrentStderr) for handler in logger.handlers):
            handler = _CurrentStderr()
            handler.setFormatter(_Formatter())
            logger.addHandler(handler)
            logger.propagate = False
        logger.setLevel(level)
    return logging.getLogger(LOGGER)


class _Formatter(logging.Formatter):
    """The message alone for INFO; ``warning:``/``debug:`` in front of the others."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


def info(message: str) -> None:
    """What the engines' ``log`` callbacks get from the command line."""
    logging.getLogger(LOGGER).info(message)
