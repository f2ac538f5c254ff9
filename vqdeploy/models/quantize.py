"""Codebook quantizers: taming's VectorQuantizer2 (and legacy VectorQuantizer) and GumbelQuantize,
inference only, with upstream's ``remap``/``used`` index remapping made deterministic.

Remapping (``remap: used.npy``): code ``used[j]`` becomes token ``j``. Upstream maps a code that
is not in ``used`` to a *random* token when ``unknown_index="random"``; we instead pick the
nearest code among the used ones (the argmin restricted to ``used``), so encoding is a pure
function of the image. ``"extra"`` and integer policies behave exactly as upstream.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vqdeploy.models.nearest_code import nearest_code

Info = tuple[Any, Any, torch.Tensor]


class RemapMixin:
    """The ``used`` table shared by both quantizers (buffer ``used``, as upstream names it)."""

    used: torch.Tensor
    remap: bool
    re_embed: int
    unknown_index: str | int

    def _init_remap(self, n_codes: int, used: torch.Tensor | None, unknown_index: str | int) -> None:
        self.remap = used is not None
        self.unknown_index = unknown_index
        self.re_embed = n_codes
        if used is None:
            return
        self.register_buffer("used", used.to(torch.int64))  # type: ignore[attr-defined]
        self.re_embed = int(used.shape[0])
        if unknown_index == "extra":
            self.unknown_index = self.re_embed
            self.re_embed += 1

    def _to_used(self, inds: torch.Tensor, n_codes: int) -> torch.Tensor:
        """Full code index -> token id ("extra"/integer policies; "random" never calls this)."""
        table = torch.full((n_codes,), int(self.unknown_index), dtype=torch.int64, device=inds.device)
        table[self.used] = torch.arange(self.used.shape[0], device=inds.device)
        return table[inds]

    def _to_all(self, inds: torch.Tensor) -> torch.Tensor:
        """Token id -> full code index (upstream ``unmap_to_all``: the extra token decodes as used[0])."""
        if self.re_embed > self.used.shape[0]:
            inds = torch.where(inds >= self.used.shape[0], torch.zeros_like(inds), inds)
        return self.used[inds]


class VectorQuantizer(RemapMixin, nn.Module):
    """taming ``VectorQuantizer2`` (and the legacy ``VectorQuantizer``) at inference.

    ``beta``/``legacy`` only change the training loss and are accepted for config compatibility.
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float = 0.25,
        remap: torch.Tensor | None = None,
        unknown_index: str | int = "random",
        sane_index_shape: bool = False,
        legacy: bool = True,
    ) -> None:
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.legacy = legacy
        self.sane_index_shape = sane_index_shape
        self.embedding = nn.Embedding(n_e, e_dim)
        self._init_remap(n_e, remap, unknown_index)

    def codebook(self) -> torch.Tensor:
        """Codebook that the token ids index: the ``used`` subset with the "random" policy."""
        if self.remap and self.unknown_index == "random":
            return self.embedding.weight[self.used]
        return self.embedding.weight

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w) latent -> (B,h,w) token ids."""
        ind = nearest_code(z, self.codebook().to(z.dtype))
        if self.remap and self.unknown_index != "random":
            ind = self._to_used(ind, self.n_e)
        return ind

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, None, Info]:
        ind = self.indices(z)
        shape = (z.shape[0], z.shape[2], z.shape[3], z.shape[1])
        if self.remap:
            # upstream quantizes to the nearest code of the full codebook and remaps only the token
            # ids: a code outside ``used`` keeps its own vector (not the unknown token's)
            nearest = nearest_code(z, self.embedding.weight.to(z.dtype))
            zq = self.embedding(nearest.reshape(-1)).view(shape).permute(0, 3, 1, 2).contiguous()
        else:
            zq = self.get_codebook_entry(ind.reshape(-1), shape)
        # upstream's straight-through output z + (z_q - z) is not bit-equal to z_q: keep it
        zq = z + (zq - z)
        if not self.sane_index_shape:
            ind = ind.reshape(-1)
        return zq, None, (None, None, ind)

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, int, int, int] | None) -> torch.Tensor:
        """Token ids (flat) -> (B,C,h,w) codebook vectors, ``shape`` = (B,h,w,C) as upstream."""
        if self.remap:
            indices = self._to_all(indices)
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q


class GumbelQuantize(RemapMixin, nn.Module):
    """taming ``GumbelQuantize`` with deterministic inference.

    Upstream encodes with ``F.gumbel_softmax`` even in eval mode, so its indices are random. We
    take the argmax of the projection logits (the noise-free mode of that distribution) and the
    exact codebook vector; this differs from upstream's noisy encoding by design.
    """

    def __init__(
        self,
        num_hiddens: int,
        embedding_dim: int,
        n_embed: int,
        straight_through: bool = True,
        kl_weight: float = 5e-4,
        temp_init: float = 1.0,
        use_vqinterface: bool = True,
        remap: torch.Tensor | None = None,
        unknown_index: str | int = "random",
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.n_embed = n_embed
        self.temperature = temp_init
        self.kl_weight = kl_weight
        self.proj = nn.Conv2d(num_hiddens, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embedding_dim)
        self._init_remap(n_embed, remap, unknown_index)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.proj(z)
        if self.remap:
            logits = logits[:, self.used]
        return logits

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        # with remap the argmax over the used logits is already the remapped token id
        return torch.argmax(self.logits(z), dim=1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, None, Info]:
        ind = self.indices(z)
        zq = self.get_codebook_entry(ind.reshape(-1), (z.shape[0], z.shape[2], z.shape[3], self.embedding_dim))
        return zq, None, (None, None, ind)

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
        if self.remap:
            indices = self._to_all(indices)
        b, h, w, c = shape
        return self.embed(indices).view(b, h, w, c).permute(0, 3, 1, 2).contiguous()
