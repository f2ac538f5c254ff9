"""First-stage and image cond-stage models: taming's ``VQModel`` (and its segmentation and
no-discriminator variants) and ``GumbelVQ``, inference only, with upstream's state_dict keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqdeploy.models.autoencoder import Decoder, Encoder
from vqdeploy.models.quantize import GumbelQuantize, Info, VectorQuantizer


class VQModel(nn.Module):
    """Encoder -> quant_conv -> quantize -> post_quant_conv -> decoder.

    The loss (discriminator, LPIPS) is training-only and is not built; its checkpoint keys are
    ignored by the loader.
    """

    quantize: VectorQuantizer | GumbelQuantize

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        n_embed: int,
        embed_dim: int,
        image_key: str = "image",
        colorize_nlabels: int | None = None,
        remap: torch.Tensor | None = None,
        sane_index_shape: bool = False,
        unknown_index: str | int = "random",
        **training_only: Any,
    ) -> None:
        super().__init__()
        self.image_key = image_key
        self.ddconfig = dict(ddconfig)
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(
            n_embed, embed_dim, beta=0.25, remap=remap, unknown_index=unknown_index,
            sane_index_shape=sane_index_shape,
        )
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        if colorize_nlabels is not None:
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))

    # --- geometry -------------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        return int(2 ** (len(self.ddconfig["ch_mult"]) - 1))

    @property
    def in_channels(self) -> int:
        return int(self.ddconfig["in_channels"])

    @property
    def out_channels(self) -> int:
        return int(self.ddconfig["out_ch"])

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids the quantizer emits (``re_embed`` when remapped)."""
        return int(self.quantize.re_embed)

    # --- upstream interface ---------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, None, Info]:
        h = self.quant_conv(self.encoder(x))
        return self.quantize(h)

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        quant, diff, _ = self.encode(x)
        return self.decode(quant), diff

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation one-hot -> pseudo colours, with the checkpoint's ``colorize`` projection."""
        if not hasattr(self, "colorize"):
            raise ValueError("this model has no 'colorize' buffer (colorize_nlabels / n_labels unset)")
        x = F.conv2d(x, weight=self.colorize)
        return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0

    # --- index interface used by the pipeline and the export ------------------------------
    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) image in [-1,1] -> (B,h,w) token ids."""
        return self.quantize.indices(self.quant_conv(self.encoder(x)))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B,h,w) token ids -> (B,out_ch,H,W) image, via the exact codebook vectors."""
        b, h, w = indices.shape
        quant = self.quantize.get_codebook_entry(indices.reshape(-1), (b, h, w, self.embed_dim))
        return self.decode(quant)


class VQSegmentationModel(VQModel):
    """``taming.models.vqgan.VQSegmentationModel``: a VQModel with a ``colorize`` buffer."""

    def __init__(self, n_labels: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("colorize", torch.randn(3, n_labels, 1, 1))


class GumbelVQ(VQModel):
    """``taming.models.vqgan.GumbelVQ`` with deterministic (argmax) encoding, see GumbelQuantize."""

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        n_embed: int,
        embed_dim: int,
        kl_weight: float = 1e-8,
        remap: torch.Tensor | None = None,
        unknown_index: str | int = "random",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("sane_index_shape", None)
        super().__init__(ddconfig, n_embed, embed_dim, **kwargs)
        self.quantize = GumbelQuantize(
            ddconfig["z_channels"], embed_dim, n_embed=n_embed, kl_weight=kl_weight, temp_init=1.0,
            remap=remap, unknown_index=unknown_index,
        )
