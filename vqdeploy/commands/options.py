"""What the commands share: backend and device choices, help texts."""

from __future__ import annotations

from typing import Any

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


# LlamaGen checkpoints (a GPT checkpoint + its VQ tokenizer): the flags LlamaGen's own scripts use, for what the
# weights do not hold (the presets' head counts: vqdeploy.families.llamagen.load.GPT_MODELS, checked by a test)
GPT_MODELS = ("GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-XXXL", "GPT-1B", "GPT-3B", "GPT-7B")


def llamagen_options(command: Any) -> Any:
    """``--vq-ckpt``, ``--gpt-model``/``--n-head``, ``--image-size``, ``--num-classes`` (LlamaGen pairs)."""
    for option in reversed((
        click.option("--vq-ckpt", type=click.Path(path_type=str), default=None,
                     help="LlamaGen: the VQ tokenizer checkpoint beside a GPT --ckpt (makes it a LlamaGen pair)."),
        click.option("--gpt-model", type=click.Choice(GPT_MODELS), default=None,
                     help="LlamaGen: the GPT preset (its head count); default: the preset the weights' width and depth "
                          "match."),
        click.option("--n-head", type=click.IntRange(1, 1024), default=None,
                     help="LlamaGen: attention heads of a GPT that matches no preset."),
        click.option("--image-size", type=click.IntRange(1, 4096), default=None,
                     help="LlamaGen: the image size the GPT was trained at (its token grid; default 256)."),
        click.option("--num-classes", type=click.IntRange(1, 1 << 24), default=None,
                     help="LlamaGen: the classes (default: the class table's rows - 1; the last row is the null "
                          "class)."),
    )):
        command = option(command)
    return command


def llamagen_values(vq_ckpt: str | None, gpt_model: str | None, n_head: int | None, image_size: int | None,
                    num_classes: int | None) -> dict[str, Any]:
    """The family options of a LlamaGen pair; the other flags without --vq-ckpt are a usage error."""
    given = {"gpt_model": gpt_model, "n_head": n_head, "image_size": image_size, "num_classes": num_classes}
    if vq_ckpt is None:
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise click.UsageError(f"--{extra[0].replace('_', '-')} is a LlamaGen option: pass --vq-ckpt VQ.pt with "
                                   "the GPT checkpoint")
        return {}
    return {"vq_ckpt": vq_ckpt, **{k: v for k, v in given.items() if v is not None}}
