"""Token orderings of taming's ``taming/modules/transformer/permuter.py``.

Each permuter maps raster-order token ids ``(B, H*W)`` to sequence order and back. The index
tables are persistent buffers with upstream's names, so Net2Net checkpoints load key-for-key.

The tables are built in Python/numpy from the config's ``H`` and ``W`` (not on the meta device),
so the grid is checked first (``check_grid``): a config with H=W=30000 would otherwise spin for
minutes in ``ZCurve`` before any weight is compared.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MAX_TOKENS = 1 << 14  # a 128x128 latent grid; taming's models use 16x16 or 32x32 (plus the block size check)


class AbstractPermuter(nn.Module):
    forward_shuffle_idx: torch.Tensor
    backward_shuffle_idx: torch.Tensor
    square = False  # needs H == W
    even = False  # needs an even side
    power_of_two = False  # needs a side that is a power of two

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        return x[:, self.backward_shuffle_idx if reverse else self.forward_shuffle_idx]

    def _set(self, forward_idx: np.ndarray | torch.Tensor | list[int],
             backward_idx: np.ndarray | torch.Tensor | None = None) -> None:
        fwd = torch.as_tensor(np.asarray(forward_idx), dtype=torch.int64)
        bwd = (torch.argsort(fwd) if backward_idx is None
               else torch.as_tensor(np.asarray(backward_idx), dtype=torch.int64))
        self.register_buffer("forward_shuffle_idx", fwd)
        self.register_buffer("backward_shuffle_idx", bwd)

    def order(self) -> np.ndarray | None:
        """Raster index of each sequence position, or None for the identity."""
        return self.forward_shuffle_idx.cpu().numpy()


def check_grid(cls: type[AbstractPermuter], H: object, W: object, max_tokens: int = MAX_TOKENS) -> tuple[int, int]:
    """``(H, W)`` as ints, or ValueError (naming the permuter and the numbers) unless ``cls`` can order that grid
    within ``max_tokens``: checked before a table is built, because building one costs time in H*W."""
    name = cls.__name__
    for key, v in (("H", H), ("W", W)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"permuter {name}: {key} must be a positive integer, got {v!r}")
    h, w = int(H), int(W)  # type: ignore[call-overload]
    if h * w > max_tokens:
        raise ValueError(f"permuter {name}: H*W = {h}x{w} = {h * w} tokens, over the limit of {max_tokens}")
    if cls.square and h != w:
        raise ValueError(f"permuter {name}: needs a square grid, got H={h}, W={w}")
    if cls.even and h % 2:
        raise ValueError(f"permuter {name}: needs an even side, got H=W={h}")
    if cls.power_of_two and h & (h - 1):
        raise ValueError(f"permuter {name}: needs a side that is a power of two, got H=W={h}")
    return h, w


class Identity(AbstractPermuter):
    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        return x

    def order(self) -> np.ndarray | None:
        return None


class Subsample(AbstractPermuter):
    square = power_of_two = True

    def __init__(self, H: int, W: int) -> None:
        super().__init__()
        H, W = check_grid(Subsample, H, W)
        c = 1
        indices = np.arange(H * W).reshape(c, H, W)
        while min(H, W) > 1:
            indices = indices.reshape(c, H // 2, 2, W // 2, 2).transpose(0, 2, 4, 1, 3).reshape(c * 4, H // 2, W // 2)
            H, W, c = H // 2, W // 2, c * 4
        assert H == W == 1
        self._set(indices.ravel())


def mortonify(i: int, j: int) -> int:
    """(i, j) -> linear Morton (Z-order) code, j in the even bits as upstream."""
    z = 0
    for pos in range(32):
        z |= ((j >> pos) & 1) << (2 * pos) | ((i >> pos) & 1) << (2 * pos + 1)
    return z


class ZCurve(AbstractPermuter):
    def __init__(self, H: int, W: int) -> None:
        super().__init__()
        H, W = check_grid(ZCurve, H, W)
        reverseidx = np.array([mortonify(i, j) for i in range(H) for j in range(W)], dtype=np.int64)
        self._set(np.argsort(reverseidx), reverseidx)


def _spiral(size: int) -> list[int]:
    indices = np.arange(size * size).reshape(size, size)
    i, j = size // 2, size // 2 - 1
    idx = [int(indices[i, j])]
    step_mult = 0
    for c in range(1, size // 2 + 1):
        step_mult += 1
        for _ in range(step_mult):
            i -= 1
            idx.append(int(indices[i, j]))
        for _ in range(step_mult):
            j += 1
            idx.append(int(indices[i, j]))
        step_mult += 1
        if c < size // 2:
            for _ in range(step_mult):
                i += 1
                idx.append(int(indices[i, j]))
            for _ in range(step_mult):
                j -= 1
                idx.append(int(indices[i, j]))
        else:
            for _ in range(step_mult - 1):
                i += 1
                idx.append(int(indices[i, j]))
    assert len(idx) == size * size
    return idx


class SpiralOut(AbstractPermuter):
    square = even = True

    def __init__(self, H: int, W: int) -> None:
        super().__init__()
        H, W = check_grid(SpiralOut, H, W)
        self._set(_spiral(W))


class SpiralIn(AbstractPermuter):
    square = even = True

    def __init__(self, H: int, W: int) -> None:
        super().__init__()
        H, W = check_grid(SpiralIn, H, W)
        self._set(_spiral(W)[::-1])


class Random(AbstractPermuter):
    def __init__(self, H: int, W: int) -> None:
        super().__init__()
        H, W = check_grid(Random, H, W)
        self._set(np.random.RandomState(1).permutation(H * W))


class AlternateParsing(AbstractPermuter):
    def __init__(self, H: int, W: int) -> None:
        super().__init__()
        H, W = check_grid(AlternateParsing, H, W)
        indices = np.arange(W * H).reshape(H, W)
        for i in range(1, H, 2):
            indices[i, :] = indices[i, ::-1]
        self._set(indices.flatten())
