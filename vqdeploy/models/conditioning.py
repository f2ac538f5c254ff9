"""Non-image cond stages of taming: SOS token (unconditional), class label, coordinates, object layouts.

They expose upstream's ``encode`` interface (``quant, loss, (_, _, indices)``) and carry no
weights; ``CoordStage`` is an ``nn.Module`` here (a plain object upstream) so it moves with the
model, which changes no state_dict key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqdeploy.conditions.objects import ObjectLayout

Encoded = tuple[torch.Tensor, None, tuple[None, None, torch.Tensor]]


class SOSProvider(nn.Module):
    """Unconditional models: one start-of-sequence token per sample."""

    def __init__(self, sos_token: int, quantize_interface: bool = True) -> None:
        super().__init__()
        self.sos_token = sos_token
        self.quantize_interface = quantize_interface

    def encode(self, x: torch.Tensor) -> Encoded:
        c = (torch.ones(x.shape[0], 1) * self.sos_token).long().to(x.device)
        return c, None, (None, None, c)


class Labelator(nn.Module):
    """Class-conditional models: the class id is the single condition token."""

    def __init__(self, n_classes: int, quantize_interface: bool = True) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.quantize_interface = quantize_interface

    def encode(self, c: torch.Tensor) -> Encoded:
        c = c[:, None]
        return c, None, (None, None, c.long())


class CoordStage(nn.Module):
    """Coordinate conditioning: a [0,1] map, area-downsampled and quantised to ``n_embed`` levels."""

    def __init__(self, n_embed: int, down_factor: int) -> None:
        super().__init__()
        self.n_embed = n_embed
        self.down_factor = down_factor

    def quantize(self, c: torch.Tensor) -> torch.Tensor:
        """(B,1,H,W) in [0,1] -> (B,1,h,w) quantised levels (float), as upstream ``encode``."""
        c = F.interpolate(c, scale_factor=1 / self.down_factor, mode="area")
        return (self.n_embed * c.clamp(0.0, 1.0)).round()

    def encode_indices(self, c: torch.Tensor) -> torch.Tensor:
        """(B,1,H,W) in [0,1] -> (B,h,w) token ids."""
        return self.quantize(c).to(torch.long)[:, 0]

    def encode(self, c: torch.Tensor) -> Encoded:
        c_quant = self.quantize(c)
        return c_quant, None, (None, None, c_quant.to(dtype=torch.long))

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        return F.interpolate(c / self.n_embed, scale_factor=self.down_factor, mode="nearest")


class DummyCondStage(nn.Module):
    """Object layouts (upstream ``taming.models.dummy_cond_stage.DummyCondStage``): the condition
    *is* the tokens, built on the host from a scene by ``layout`` (parameters from the run's data set)."""

    def __init__(self, layout: ObjectLayout) -> None:
        super().__init__()
        self.layout = layout
        self.conditional_key = layout.builder.kind

    def encode(self, c: torch.Tensor) -> Encoded:
        return c, None, (None, None, c)
