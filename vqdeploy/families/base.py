"""What a model family is: everything about one codebase's models that the rest of vqdeploy needs, behind
one class (optimum's ``OnnxConfig`` + ``TasksManager``, TensorRT demo's ``BaseModel``).

A family loads its checkpoints, says what a loaded model is (the manifest's ``model`` entry), makes the
specs of the graphs to export (names, axes, profiles, sample inputs), gives the PyTorch stages the torch
backend and the parity reference run, the codebase's own sampler (``bench``'s "upstream" row) and the
distances that certify a near-tie between two codes. The runtime needs none of it: a manifest says
everything a runtime reads (its ``model.family`` names the family only for the PyTorch side).

Adding a family: one package under ``vqdeploy/families/`` with a ``Family`` subclass, registered in
``vqdeploy/families/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from vqdeploy.artifacts import Manifest
    from vqdeploy.families.graph_spec import GraphSpec


class CachedGPT(Protocol):
    """A transformer the torch backend drives with its fixed-capacity KV cache (``models.kv_cache``)."""

    block_size: int

    def new_cache(self, batch: int, device: torch.device | str | None = None) -> Any: ...

    def forward_cached(self, idx: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]: ...

    def forward_at(self, idx: torch.Tensor, position: torch.Tensor, layers: Any, write: Any) -> tuple[torch.Tensor, Any]: ...


@dataclass
class TorchStages:
    """A loaded model as the torch backend runs it: the same stage modules the graphs are exported from
    (in fp32), so preprocessing and arithmetic are the graphs' own."""

    encoder: nn.Module  # image (B,C,H,W) in [-1,1] -> indices (B,h,w)
    decoder: nn.Module  # indices (B,h,w) -> image (B,C,H,W)
    cond_encoder: nn.Module | None = None  # the condition's encoder graph module, where the kind has one
    transformer: CachedGPT | None = None  # None: a VQGAN alone


class Family(ABC):
    """One codebase's models (taming-transformers, LlamaGen ...): the PyTorch side of vqdeploy."""

    name: ClassVar[str]  # the manifest's ``model.family``
    title: ClassVar[str]  # in messages and docs ("taming-transformers")
    upstream_label: ClassVar[str] = "upstream sampler, torch-cpu fp32 (no cache)"  # bench's row of ``upstream_sampler``

    # --- loading ---------------------------------------------------------------------------------
    @abstractmethod
    def claims(self, ckpt: Path, options: Mapping[str, Any]) -> bool:
        """Whether this family loads ``ckpt`` (with the CLI's family options, e.g. a VQ checkpoint beside it)."""

    @abstractmethod
    def load(self, ckpt: str | Path, config: Any = None, **options: Any) -> nn.Module:
        """The model in eval mode, its weights read safely; it carries ``model.source`` (where it came from)."""

    def reload_options(self, manifest: Manifest) -> dict[str, Any]:
        """``load`` options that reload the checkpoint a manifest was exported from (what the file alone
        does not fix, e.g. the number of object categories)."""
        return {}

    # --- what it is --------------------------------------------------------------------------------
    @abstractmethod
    def describe(self, model: nn.Module) -> dict[str, Any]:
        """The manifest's ``model`` entry (and ``inspect``'s answer)."""

    # --- export -------------------------------------------------------------------------------------
    @abstractmethod
    def graph_specs(self, model: nn.Module, precision: str, max_batch: int) -> list[GraphSpec]:
        """Every graph the model needs, in pipeline order."""

    def quantizable(self, model: nn.Module) -> nn.Module | None:
        """The module whose linear layers ``--quantize`` rounds (the transformer), or None."""
        return None

    # --- the PyTorch side of parity and bench ---------------------------------------------------------
    @abstractmethod
    def torch_stages(self, model: nn.Module, manifest: Manifest) -> TorchStages:
        """The stage modules the torch backend runs."""

    @abstractmethod
    def code_distances(self, model: nn.Module, image: torch.Tensor,
                       cond_encoder: nn.Module | None = None) -> tuple[torch.Tensor, bool]:
        """(B,h,w,K) "distance" of every code at every cell of the first stage's encoding of ``image`` (or of the
        condition's, with its ``TorchStages.cond_encoder``; lower is nearer), and whether they are negated logits
        (Gumbel); parity certifies a differing code as a near-tie with them."""

    @abstractmethod
    def teacher_forced_logits(self, model: nn.Module, sequence: torch.Tensor) -> torch.Tensor:
        """(B,T,V) logits of the transformer over a whole (B,T) sequence, in one forward."""

    def upstream_sampler(self, model: nn.Module) -> Callable[..., torch.Tensor] | None:
        """The codebase's own sampler, ``sample(cond_tokens, steps, top_k)`` -> tokens (``bench``'s reference
        row; a family that can be guided also takes ``cfg_scale=``), or None."""
        return None
