"""Error hierarchy. Every message names the node, tensor, option or file at fault and what to do."""

from __future__ import annotations


class DfqError(Exception):
    """Base class; the CLI prints the message on one line and exits with `exit_code`."""

    exit_code = 1


class UsageError(DfqError):
    """A bad option or argument (CLI exit code 2)."""

    exit_code = 2


class ModelLoadError(DfqError):
    """The file is missing, not ONNX, truncated, or its external data cannot be read safely."""


class UnsupportedModelError(DfqError):
    """The model is valid ONNX but uses something the compiler refuses to quantize."""


class TargetError(UsageError):
    """A target profile is unknown or malformed."""


class InfeasibleBudgetError(UsageError):
    """No bit plan satisfies the requested budget."""


class OutputError(DfqError):
    """An output file cannot be written (exit code 1); nothing is left behind."""


class PassError(DfqError):
    """A pass failed; the message carries the pass name and the passes that ran before it."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause
        if isinstance(cause, DfqError):
            self.exit_code = cause.exit_code


class TargetRuntimeError(DfqError):
    """The target's own runtime cannot compile the written model (exit code 1); nothing is written."""
