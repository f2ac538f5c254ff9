"""Mixed-precision helpers for the fp16 export.

In fp32 every helper is the identity, so the modules stay numerically identical to upstream
taming. When a module runs in fp16 (the ``--precision fp16`` export), the numerically sensitive
parts (normalisation statistics, softmax, attention scores) are computed in fp32 and cast back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upcast(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32; fp32 unchanged (no op is recorded on export)."""
    return x if x.dtype == torch.float32 else x.float()


class GroupNorm32(torch.nn.GroupNorm):
    """GroupNorm whose statistics are always computed in fp32 (same state_dict as nn.GroupNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        y = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)


class LayerNorm32(torch.nn.LayerNorm):
    """LayerNorm computed in fp32 (same state_dict as nn.LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)
