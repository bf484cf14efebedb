"""Typed errors for user mistakes. Each carries a one-line message and a hint on how to fix it.

The CLI's single error boundary (`gaqtool.cli.app.main`) prints ``error:`` + ``hint:`` for these
and exits 1 (130 for ``Interrupted``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "GaqtoolError",
    "InputError",
    "DataError",
    "ModelLoadError",
    "FormatError",
    "UnsupportedModelError",
    "UnknownElementError",
    "Interrupted",
    "BudgetError",
]


class GaqtoolError(Exception):
    """Base class of all errors caused by user input, with an optional ``hint``."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(GaqtoolError):
    """A command-line value or argument is invalid."""


class DataError(GaqtoolError):
    """A data file is missing, unreadable or inconsistent (shapes, NaN, unknown molecule)."""


class ModelLoadError(GaqtoolError):
    """A model checkpoint cannot be read or rebuilt."""


class FormatError(GaqtoolError):
    """A quantized safetensors file is truncated, corrupted or of an unknown format version."""


class UnsupportedModelError(GaqtoolError):
    """A model contains modules that gaqtool cannot quantize or run."""


class UnknownElementError(DataError, ValueError):
    """A structure holds an element the model has no parameters for (also a ValueError, which
    is what models raise for it)."""


class Interrupted(GaqtoolError):
    """Ctrl-C: the command stopped (after keeping what it could, e.g. an MD trajectory so far)."""

    exit_code = 130


class BudgetError(GaqtoolError):
    """An error budget (``--max-error``) cannot be met with the bits allowed."""
