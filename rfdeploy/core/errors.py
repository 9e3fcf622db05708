"""Errors users can act on. Each kind maps to a documented process exit code (see README)."""

from __future__ import annotations


class RfdeployError(Exception):
    """Base class: a message for the user, an optional hint, and the exit code the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:  # the hint travels with the message so logs keep it
        base = super().__str__()
        return f"{base}\n  hint: {self.hint}" if self.hint else base


class InputError(RfdeployError):
    """A user-supplied path or image cannot be used (missing, unreadable, too large, empty)."""

    exit_code = 2


class ModelFileError(RfdeployError):
    """A checkpoint, ONNX file, engine or manifest is corrupt, of the wrong kind, or mismatched."""

    exit_code = 3


class EngineMismatchError(ModelFileError):
    """An engine does not fit this environment (TensorRT version, GPU, plan hash, input shape)."""

    exit_code = 4


class BackendUnavailableError(RfdeployError):
    """The requested backend (TensorRT, a GPU, an onnxruntime provider) is not available here."""

    exit_code = 5


class BuildError(RfdeployError):
    """Export, quantization or engine build failed; no output file was left behind."""

    exit_code = 6


# A directory run where some inputs failed but the others were processed and written.
PARTIAL_FAILURE_EXIT_CODE = 7
