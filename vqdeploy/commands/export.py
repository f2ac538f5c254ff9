"""``vqdeploy export``."""

from __future__ import annotations

import click

from vqdeploy.commands.options import llamagen_options, llamagen_values
from vqdeploy.needs_torch import require_torch


@click.command(epilog="""\b
Examples:
  vqdeploy export --ckpt logs/2020-11-09T13-31-51_sflckr/checkpoints/last.ckpt --out artifacts/sflckr
  vqdeploy export --ckpt models/demo/checkpoints/last.ckpt --out artifacts/demo-fp16 --precision fp16
  vqdeploy export --ckpt models/demo/checkpoints/last.ckpt --out artifacts/demo-int4 --quantize int4
  vqdeploy export --ckpt c2i_XL_384.pt --vq-ckpt vq_ds16_c2i.pt --gpt-model GPT-XL --image-size 384 --out artifacts/lg
""")
@click.option("--ckpt", required=True, type=click.Path(path_type=str), help="Lightning last.ckpt, run directory, state_dict or .safetensors.")
@click.option("--config", type=click.Path(path_type=str), help="Model config YAML (default: <run>/configs/*-project.yaml).")
@click.option("--out", default="artifacts", show_default=True, type=click.Path(path_type=str), help="Artifacts directory.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Graph precision; fp16/bf16 keep normalisation, softmax and the quantizer in fp32.")
@click.option("--opset", type=int, default=None, help="ONNX opset (18..23); default: 18, or 22 for bf16.")
@click.option("--max-batch", type=int, default=8, show_default=True, help="Largest batch the graphs' profiles cover.")
@click.option("--quantize", type=click.Choice(["int8", "int4"]), default=None,
              help="Weight-only quantized transformer (linear layers; activations and KV cache at --precision); "
                   "refused below a measured quality threshold against fp32.")
@click.option("--quantize-block", type=int, default=None,
              help="Input channels per quantization scale, a power of two 16..1024; default int8 128, int4 32 "
                   "(larger: smaller and faster, less accurate; docs/quantization.md).")
@click.option("--parity/--no-parity", default=True, show_default=True, help="Check every graph against PyTorch (ONNX Runtime CPU).")
@click.option("--valid-length/--no-valid-length", default=True, show_default=True,
              help="Also export transformer_valid_length.onnx, ONNX Runtime's transformer whose steps read only the "
                   "valid part of the KV cache (causal fp32/fp16 models); --no-valid-length: only the portable "
                   "transformer that TensorRT and the C++ runtime load.")
@click.option("--object-classes", type=click.IntRange(1, 1 << 24), default=None,
              help="Object-layout models whose data config states no no_object_classes: the number of categories.")
@click.option("--example", type=click.Path(path_type=str), default=None,
              help="A condition file of this model (sketch, label map, scene) that `parity` samples; default: the run "
                   "directory's example.png (.jpg, .webp, .json) if there is one.")
@llamagen_options
def export(ckpt: str, config: str | None, out: str, precision: str, opset: int | None, max_batch: int, parity: bool,
           valid_length: bool, quantize: str | None, quantize_block: int | None, object_classes: int | None,
           example: str | None,
           vq_ckpt: str | None, gpt_model: str | None, n_head: int | None, image_size: int | None, num_classes: int | None) -> None:
    """Export encoder, cond encoder, transformer (KV cache) and decoder to ONNX, with a manifest. A LlamaGen GPT
    checkpoint takes its tokenizer with --vq-ckpt (see docs/llamagen.md)."""
    family_options = llamagen_values(vq_ckpt, gpt_model, n_head, image_size, num_classes)
    require_torch("export needs PyTorch")
    from vqdeploy.export.exporter import export as run_export  # imports torch

    run_export(ckpt, out, config, precision, opset, max_batch, parity, log=lambda m: click.echo(m, err=True),
               quantize=quantize, object_classes=object_classes, example=example, family_options=family_options,
               quantize_block=quantize_block, valid_length=valid_length)
