"""Errors that the CLI turns into one clear line and a non-zero exit.

Anything raised as a ``VQDeployError`` is a problem with the user's input or environment
(a bad checkpoint, a wrong image, a missing backend); anything else is a bug in vqdeploy.
"""

from __future__ import annotations


class VQDeployError(Exception):
    """Base class: the message is shown to the user as is, without a traceback."""

    exit_code = 1


class CheckpointError(VQDeployError):
    """Missing, truncated, corrupt, unsafe or mismatched checkpoint."""


class ConfigError(VQDeployError):
    """Missing or invalid model config, or an unknown ``target``."""


class InputError(VQDeployError):
    """Bad condition image, class id, size or sampling option."""


class TooLargeError(InputError):
    """An input over a size limit (``serve`` answers 413)."""


class UnsupportedInputError(InputError):
    """An input of a type or mode the model does not take (``serve`` answers 415)."""


class ArtifactError(VQDeployError):
    """Missing, foreign or inconsistent export artifacts or engines."""


class BackendError(VQDeployError):
    """A runtime (onnxruntime, TensorRT, CUDA) is not installed or cannot run here."""


class ParityError(VQDeployError):
    """A deployed stage does not match the PyTorch reference within tolerance."""

    exit_code = 3
