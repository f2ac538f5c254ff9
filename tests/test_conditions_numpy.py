"""Coordinate conditions without PyTorch: numpy block means give torch's area interpolation tokens."""

from __future__ import annotations

import numpy as np
import pytest

from vqdeploy.conditions.coordinates import area_downsample, coord_map, coord_tokens


@pytest.mark.parametrize("h,w,f,n", [(16, 16, 4, 256), (32, 64, 8, 1024), (256, 256, 16, 1024), (48, 80, 16, 512),
                                     (20, 36, 4, 7)])
def test_coord_tokens_equal_torch_area_interpolation(h: int, w: int, f: int, n: int) -> None:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    c = coord_map(h, w)
    area = F.interpolate(torch.from_numpy(c), scale_factor=1 / f, mode="area")
    ref = (n * area.clamp(0.0, 1.0)).round().long()[:, 0].numpy()
    assert np.array_equal(coord_tokens(c, n, f), ref)
    assert np.allclose(area_downsample(c, f), area.numpy(), rtol=0, atol=1e-6)
    x = np.random.default_rng(0).random((2, 3, h, w), dtype=np.float32)
    want = F.interpolate(torch.from_numpy(x), scale_factor=1 / f, mode="area").numpy()
    assert np.allclose(area_downsample(x, f), want, rtol=0, atol=1e-6)
