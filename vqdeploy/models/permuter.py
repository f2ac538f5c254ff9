"""Token orderings of taming's ``taming/modules/transformer/permuter.py``.

Each permuter maps raster-order token ids ``(B, H*W)`` to sequence order and back. The index
tables are persistent buffers with upstream's names, so Net2Net checkpoints load key-for-key.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class AbstractPermuter(nn.Module):
    forward_shuffle_idx: torch.Tensor
    backward_shuffle_idx: torch.Tensor

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        return x[:, self.backward_shuffle_idx if reverse else self.forward_shuffle_idx]

    def _set(self, forward_idx: np.ndarray | torch.Tensor, backward_idx: np.ndarray | torch.Tensor | None = None) -> None:
        fwd = torch.as_tensor(np.asarray(forward_idx), dtype=torch.int64)
        bwd = torch.argsort(fwd) if backward_idx is None else torch.as_tensor(np.asarray(backward_idx), dtype=torch.int64)
        self.register_buffer("forward_shuffle_idx", fwd)
        self.register_buffer("backward_shuffle_idx", bwd)

    def order(self) -> np.ndarray | None:
        """Raster index of each sequence position, or None for the identity."""
        return self.forward_shuffle_idx.cpu().numpy()


class Identity(AbstractPermuter):
    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        return x

    def order(self) -> np.ndarray | None:
        return None


class Subsample(AbstractPermuter):
    def __init__(self, H: int, W: int) -> None:
        super().__init__()
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
    def __init__(self, H: int, W: int) -> None:
        super().__init__()
        assert H == W
        self._set(_spiral(W))


class SpiralIn(AbstractPermuter):
    def __init__(self, H: int, W: int) -> None:
        super().__init__()
        assert H == W
        self._set(_spiral(W)[::-1])


class Random(AbstractPermuter):
    def __init__(self, H: int, W: int) -> None:
        super().__init__()
        self._set(np.random.RandomState(1).permutation(H * W))


class AlternateParsing(AbstractPermuter):
    def __init__(self, H: int, W: int) -> None:
        super().__init__()
        indices = np.arange(W * H).reshape(H, W)
        for i in range(1, H, 2):
            indices[i, :] = indices[i, ::-1]
        self._set(indices.flatten())
