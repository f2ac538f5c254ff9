"""The nearest-codebook-entry search as a real torch custom op, ``vqdeploy::nearest_code``.

Being an opaque op in the traced graph lets the ONNX exporter translate it into a single
``vqdeploy::NearestCode`` node (see ``vqdeploy.export.nearest_code_onnx``) instead of inlining
the distance computation. The eager implementation is upstream's exact arithmetic
(``|z|^2 + |e|^2 - 2 z.e``, then the first argmin), so indices are bit-identical to taming.
"""

from __future__ import annotations

import torch


def nearest_code_reference(latent: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(B,C,h,w) latent, (K,C) codebook -> (B,h,w) int64 indices, as taming's VectorQuantizer2."""
    b, c, h, w = latent.shape
    z = latent.permute(0, 2, 3, 1).contiguous()
    z_flattened = z.view(-1, c)
    d = (
        torch.sum(z_flattened**2, dim=1, keepdim=True)
        + torch.sum(codebook**2, dim=1)
        - 2 * torch.einsum("bd,dn->bn", z_flattened, codebook.t())
    )
    return torch.argmin(d, dim=1).view(b, h, w)


def nearest_code_distances(latent: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(B,h,w,K) squared distances, same arithmetic as the op (used to prove near-ties)."""
    b, c, h, w = latent.shape
    z_flattened = latent.permute(0, 2, 3, 1).reshape(-1, c)
    d = (
        torch.sum(z_flattened**2, dim=1, keepdim=True)
        + torch.sum(codebook**2, dim=1)
        - 2 * torch.einsum("bd,dn->bn", z_flattened, codebook.t())
    )
    return d.view(b, h, w, -1)


@torch.library.custom_op("vqdeploy::nearest_code", mutates_args=())
def nearest_code(latent: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return nearest_code_reference(latent, codebook)


@nearest_code.register_fake
def _nearest_code_fake(latent: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return latent.new_empty((latent.shape[0], latent.shape[2], latent.shape[3]), dtype=torch.int64)
