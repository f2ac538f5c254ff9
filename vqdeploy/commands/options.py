"""What the commands share: backend and device choices, help texts."""

from __future__ import annotations

import click

from vqdeploy.runtime.backends.registry import DEVICES, choices
from vqdeploy.runtime.generation import DECODINGS

BACKEND = click.Choice(choices())
ARTIFACTS = "Artifacts directory written by `vqdeploy export`."
DEVICE_HELP = ("Default: per backend - onnxruntime on cuda only with onnxruntime-gpu and a GPU, tensorrt on cuda, "
               "torch on cuda when torch sees a GPU; the choice is printed.")
CUDA_GRAPHS_HELP = ("GPU: capture the one-token step as a CUDA graph once per batch size and replay it "
                    "(ONNX Runtime CUDA, TensorRT, torch); not yet measured on a GPU, so off by default.")
BACKEND_HELP = "auto: TensorRT when engines and a GPU are there, else ONNX Runtime; torch runs the checkpoint."
SAMPLER_HELP = "graph: the exported sampler graph on the backend's device (logits never leave it)."
DEVICE = click.Choice(DEVICES)
DECODING = click.Choice(DECODINGS)
DECODING_HELP = ("jacobi: speculative Jacobi decoding, several tokens per transformer call with the sequential "
                 "sampler's distribution (host sampler, trained size; rows one at a time); see docs/runtime.md.")
JACOBI_WINDOW_HELP = "Draft tokens verified per transformer call with --decoding jacobi."
