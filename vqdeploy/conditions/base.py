"""What a conditioning kind is: one class that owns its whole path, so nothing else tests kind strings.

A kind declares its manifest entry (``schema``, checked before anything indexes it) and parses it
into an instance (``from_manifest``); the instance reads the user's input (``read_input`` for
``run``'s INPUT, ``as_condition`` for the library), makes the condition tokens (``condition_tokens``), says
which extra graphs it runs, gives seeded parity inputs and a picture for reports. The export side
(``from_model``: the manifest entry of a loaded PyTorch model; ``export_graphs``; ``torch_encoder``)
imports PyTorch only inside those methods, so the runtime stays torch-free.

Adding a kind: subclass ``Condition``, decorate it with ``@register``, import its module in
``vqdeploy/conditions/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import numpy as np

from vqdeploy.errors import ArtifactError, InputError
from vqdeploy.schema import Rule

if TYPE_CHECKING:
    from vqdeploy.runtime.backends.base import Backend
    from vqdeploy.typed_manifest import VQStage

Log = Callable[[str], None]


class Condition:
    """One model's conditioning: the parsed ``model.conditioning`` entry of its manifest."""

    kind: ClassVar[str]
    schema: ClassVar[Rule]  # the manifest entry (``vqdeploy.schema`` rules), checked before ``from_manifest``
    what: ClassVar[str]  # what the model is conditioned on, in messages ("an image", "a class label")
    graphs: ClassVar[tuple[str, ...]] = ()  # graphs it runs besides the transformer and the decoder
    picture_width: ClassVar[int] = 96  # how wide the parity report shows ``picture``
    draws_layout: ClassVar[bool] = False  # ``run --save-layout`` applies
    input_name: ClassVar[str] = "file"  # the input ``claims`` recognises, in messages ("scene file")

    def __init__(self, entry: Mapping[str, Any]) -> None:
        self.tokens = int(entry["tokens"])  # condition tokens per sample

    # --- manifest ------------------------------------------------------------------------------
    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any], where: str) -> Condition:
        """The kind of a schema-valid entry; ArtifactError naming ``where`` when its numbers disagree."""
        return cls(entry)

    def check_model(self, vocab_size: int, where: str) -> None:
        """What the entry says against the transformer (ids within its vocabulary)."""

    @staticmethod
    def fail(where: str, message: str) -> NoReturn:
        raise ArtifactError(f"{where}: {message} (re-export)")

    # --- export side (PyTorch) -----------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: Any) -> dict[str, Any] | None:
        """The manifest entry of a loaded Net2NetTransformer whose cond stage is this kind, else None."""
        return None

    def export_graphs(self, model: Any, dtype: Any, max_batch: int) -> list[Any]:
        """The ``GraphSpec``s of ``graphs`` for a loaded model (in the model's precision copy)."""
        return []

    def torch_encoder(self, model: Any, first_stage_encoder: Any) -> Any:
        """The torch backend's module for ``Backend.encode_cond``, or None (no cond encoder)."""
        return None

    def load_options(self) -> dict[str, Any]:
        """``load_model`` keyword arguments the checkpoint alone does not fix."""
        return {}

    # --- input -------------------------------------------------------------------------------------
    @classmethod
    def claims(cls, path: Path) -> bool:
        """Whether ``path`` is obviously this kind's input (a scene file), for a clear error when it is
        given to a model of another kind."""
        return False

    @property
    def summary(self) -> str:
        """The model, in messages: "conditioned on an image"."""
        return f"conditioned on {self.what}"

    def read_input(self, input: Path | None, size: tuple[int, int] | None, budget: int,
                   log: Log | None = None) -> np.ndarray | None:
        """``run``'s INPUT (or its absence) -> the preprocessed condition; ``size`` (H, W): the image to sample."""
        if input is not None:
            from vqdeploy.conditions.registry import CONDITIONS

            for other in CONDITIONS.values():
                if other is not type(self) and other.claims(input) and not self.claims(input):
                    raise InputError(f"{input}: a {other.input_name} is for models conditioned on {other.what}; "
                                     f"this model is {self.summary}")
        return self.load_input(input, size, budget, log)

    def load_input(self, input: Path | None, size: tuple[int, int] | None, budget: int,
                   log: Log | None = None) -> np.ndarray | None:
        """``read_input`` once no other kind claims ``input``: the default, no INPUT at all."""
        if input is not None:
            raise InputError(f"this model is {self.summary}: it takes no INPUT")
        return self.default_input(size)

    def from_upload(self, data: bytes, log: Log | None = None) -> np.ndarray:
        """An uploaded condition file's bytes (``serve``) -> the preprocessed condition (image kinds are
        decoded by ``serve`` itself, which answers oversized and unreadable images with their HTTP status)."""
        raise InputError(f"this model is {self.summary}: it takes no condition upload")

    def default_input(self, size: tuple[int, int] | None) -> np.ndarray | None:
        """The condition when the user gives none (None: the kind needs nothing)."""
        return None

    def as_condition(self, x: Any, size: tuple[int, int] | None, budget: int,
                     log: Log | None = None) -> np.ndarray | None:
        """A library caller's condition (a path, an image, an array ...) -> the preprocessed condition."""
        return x

    def check_class(self, class_id: int | None, option: str = "--class") -> None:
        """A class id is only for class-conditional models."""
        if class_id is not None:
            raise InputError(f"{option} is for class-conditional models; this model is {self.summary}")

    @property
    def classes(self) -> int | None:
        """How many class ids the model takes (None: it takes none)."""
        return None

    # --- tokens ------------------------------------------------------------------------------------
    def condition_tokens(self, backend: Backend, batch: int, condition: np.ndarray | None,
                         class_id: int | None) -> np.ndarray:
        """(B,h,w) condition tokens on a grid, or (B,n)."""
        raise NotImplementedError

    def image_grid(self, cond_grid: np.ndarray, first: VQStage) -> tuple[int, int] | None:
        """The image latent grid a spatial condition implies (None: the kind fixes none)."""
        return None

    def check_size(self, size: tuple[int, int], first: VQStage) -> None:
        """A --size this kind cannot sample."""

    def size_multiple(self) -> int:
        """--size must be a multiple of this (besides the first stage's factor)."""
        return 1

    # --- parity and reports ----------------------------------------------------------------------------
    def parity_input(self, rng: np.random.Generator, batch: int, first: VQStage, image: np.ndarray) -> np.ndarray | None:
        """A seeded condition of ``batch`` rows (``image``: the first-stage parity input)."""
        return None

    def picture(self, condition: np.ndarray | None, size: tuple[int, int] = (256, 256)) -> np.ndarray | None:
        """(H,W,C) uint8: the condition as people look at it, or None."""
        return None

    def text(self) -> str:
        """The condition in words where there is no picture."""
        return self.kind


def repeat_rows(grid: np.ndarray, batch: int) -> np.ndarray:
    """One condition for every sample of a batch."""
    return np.repeat(grid, batch, axis=0) if grid.shape[0] == 1 and batch > 1 else grid


def require_condition(condition: np.ndarray | None, what: str) -> np.ndarray:
    if condition is None:
        raise InputError(f"this model needs a condition input ({what})")
    return condition

