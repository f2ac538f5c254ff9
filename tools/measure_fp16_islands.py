"""Measure what the fp32 islands of the fp16 export buy: teacher-forced logits, decoder PSNR and
encoder tokens of the model in fp16, with and without the islands, against fp32 (torch, CPU).

    python tools/measure_fp16_islands.py models/demo/checkpoints/last.ckpt
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any

import torch

import vqdeploy
from vqdeploy.families.taming.describe import describe
from vqdeploy.families.taming.graphs import DecoderGraph, EncoderGraph
from vqdeploy.models import autoencoder, mingpt, precision
from vqdeploy.parity.inputs import parity_inputs
from vqdeploy.artifacts.manifest import ModelInfo


def main(ckpt: str) -> None:
    torch.set_num_threads(1)
    model = vqdeploy.load_model(ckpt)
    info = ModelInfo.from_json(describe(model), "model")
    inputs = parity_inputs(info, 0, batch=4)
    x = torch.from_numpy(inputs["image"])
    with torch.no_grad():
        z = model.first_stage_model.encode_indices(x)
        ref_img = model.first_stage_model.decode_indices(z)
        c = model.cond_stage_model.encode_indices(torch.from_numpy(inputs["cond"])).reshape(4, -1)
        seq = torch.cat([c, z.reshape(4, -1)], 1)[:, :-1]
        ref_logits = model.transformer(seq)[0]

    def run(islands: bool) -> dict[str, Any]:
        half = copy.deepcopy(model).half()
        for vq in (half.first_stage_model, half.cond_stage_model):
            vq.quantize.float()
        saved = (precision.upcast, mingpt.upcast, autoencoder.upcast,
                 precision.GroupNorm32.forward, precision.LayerNorm32.forward)
        if not islands:  # everything in fp16: identity casts, plain GroupNorm / LayerNorm
            precision.upcast = mingpt.upcast = autoencoder.upcast = lambda t: t
            precision.GroupNorm32.forward = torch.nn.GroupNorm.forward
            precision.LayerNorm32.forward = torch.nn.LayerNorm.forward
        try:
            with torch.no_grad():
                img = DecoderGraph(half.first_stage_model, torch.float16)(z).float()
                logits = half.transformer.forward_cached(seq)[0].float()
                tokens = EncoderGraph(half.first_stage_model, torch.float16)(x)
        finally:
            (precision.upcast, mingpt.upcast, autoencoder.upcast,
             precision.GroupNorm32.forward, precision.LayerNorm32.forward) = saved
        mse = float(((img - ref_img) ** 2).mean())
        return {"decoder_psnr_db": round(10 * math.log10(4 / mse), 2) if mse else math.inf,
                "logits_max_abs": round(float((logits - ref_logits).abs().max()), 4),
                "greedy_agreement": float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
                "encoder_agreement": float((tokens == z).float().mean())}

    print("fp16 with fp32 islands:", run(True))
    print("fp16 everywhere       :", run(False))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "models/demo/checkpoints/last.ckpt")
