"""taming's ``Net2NetTransformer``: a first-stage VQGAN, a cond stage and a minGPT over
``[cond tokens, image tokens]``, with upstream's reference sampler and a KV-cached one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqdeploy.models.conditioning import CoordStage, DummyCondStage, Labelator, SOSProvider
from vqdeploy.models.mingpt import GPT
from vqdeploy.models.permuter import AbstractPermuter, Identity
from vqdeploy.models.vqgan import VQModel

CondStage = VQModel | SOSProvider | Labelator | CoordStage | DummyCondStage


class Net2NetTransformer(nn.Module):
    def __init__(
        self,
        transformer: GPT,
        first_stage_model: VQModel,
        cond_stage_model: CondStage,
        permuter: AbstractPermuter | None = None,
        first_stage_key: str = "image",
        cond_stage_key: str = "depth",
        downsample_cond_size: int = -1,
        pkeep: float = 1.0,
        sos_token: int = 0,
        unconditional: bool = False,
        **training_only: Any,
    ) -> None:
        super().__init__()
        self.be_unconditional = unconditional or isinstance(cond_stage_model, SOSProvider)
        self.sos_token = sos_token
        self.first_stage_key = first_stage_key
        self.cond_stage_key = first_stage_key if self.be_unconditional else cond_stage_key
        self.first_stage_model = first_stage_model
        self.cond_stage_model = cond_stage_model
        self.permuter = permuter if permuter is not None else Identity()
        self.transformer = transformer
        self.downsample_cond_size = downsample_cond_size
        self.pkeep = pkeep

    @property
    def cond_is_first_stage(self) -> bool:
        return self.cond_stage_model is self.first_stage_model

    # --- upstream interface ---------------------------------------------------------------
    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits for the image tokens (pkeep corruption is training-only)."""
        _, z_indices = self.encode_to_z(x)
        _, c_indices = self.encode_to_c(c)
        cz_indices = torch.cat((c_indices, z_indices), dim=1)
        logits, _ = self.transformer(cz_indices[:, :-1])
        return logits[:, c_indices.shape[1] - 1 :], z_indices

    @staticmethod
    def top_k_logits(logits: torch.Tensor, k: int) -> torch.Tensor:
        v, _ = torch.topk(logits, k)
        out = logits.clone()
        out[out < v[..., [-1]]] = -float("Inf")
        return out

    def _pick(self, logits: torch.Tensor, temperature: float, sample: bool, top_k: int | None) -> torch.Tensor:
        logits = logits / temperature
        if top_k is not None:
            logits = self.top_k_logits(logits, top_k)
        probs = F.softmax(logits, dim=-1)
        if sample:
            return torch.multinomial(probs, num_samples=1)
        _, ix = torch.topk(probs, k=1, dim=-1)
        return ix

    @torch.no_grad()
    def sample(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        steps: int,
        temperature: float = 1.0,
        sample: bool = False,
        top_k: int | None = None,
        callback: Callable[[int], None] = lambda k: None,
    ) -> torch.Tensor:
        """Upstream's reference sampler: recomputes the whole sequence for every token."""
        if self.pkeep <= 0.0:
            raise NotImplementedError("pkeep <= 0 (one-pass noise sampling) is not supported")
        x = torch.cat((c, x), dim=1)
        block_size = self.transformer.get_block_size()
        for k in range(steps):
            callback(k)
            if x.size(1) > block_size:
                raise ValueError("the conditioning no longer fits the transformer's block size")
            logits, _ = self.transformer(x)
            x = torch.cat((x, self._pick(logits[:, -1, :], temperature, sample, top_k)), dim=1)
        return x[:, c.shape[1] :]

    @torch.no_grad()
    def encode_to_z(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quant_z, _, info = self.first_stage_model.encode(x)
        indices = info[2].view(quant_z.shape[0], -1)
        return quant_z, self.permuter(indices)

    @torch.no_grad()
    def encode_to_c(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.downsample_cond_size > -1:
            c = F.interpolate(c, size=(self.downsample_cond_size, self.downsample_cond_size))
        quant_c, _, (_, _, indices) = self.cond_stage_model.encode(c)
        # upstream only reshapes indices with more than 2 dims and then fails on flat VQ indices
        return quant_c, indices.reshape(c.shape[0], -1)

    @torch.no_grad()
    def decode_to_img(self, index: torch.Tensor, zshape: tuple[int, int, int, int] | torch.Size) -> torch.Tensor:
        index = self.permuter(index, reverse=True)
        bhwc = (zshape[0], zshape[2], zshape[3], zshape[1])
        quant_z = self.first_stage_model.quantize.get_codebook_entry(index.reshape(-1), shape=bhwc)
        return self.first_stage_model.decode(quant_z)
