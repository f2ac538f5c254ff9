"""``vqdeploy run``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vqdeploy.commands.options import (
    ARTIFACTS,
    BACKEND,
    BACKEND_HELP,
    CUDA_GRAPHS_HELP,
    DECODING,
    DECODING_HELP,
    DEVICE,
    DEVICE_HELP,
    JACOBI_WINDOW_HELP,
    SAMPLER_HELP,
)
from vqdeploy.errors import InputError
from vqdeploy.limits import MAX_CFG_INTERVAL, MAX_CFG_SCALE, MAX_TOP_K, check_finite, check_int
from vqdeploy.runtime.decoding import SAMPLERS
from vqdeploy.runtime.jacobi import DEFAULT_WINDOW, check_window
from vqdeploy.runtime.run import RunOptions, run_pipeline
from vqdeploy.runtime.sampling import (
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    SamplingParams,
    check_temperature,
)
from vqdeploy.trt import ensure

RUN_EXAMPLE = """\b
Examples:
  vqdeploy run sketch.png --artifacts artifacts/demo --num-samples 4 --seed 0 --out samples/s.png
  vqdeploy run labels.png --artifacts artifacts/sflckr --size 512x256 --top-k 100   # wider: sliding window
  vqdeploy run --artifacts artifacts/imagenet --class 281 --temperature 0           # greedy
  vqdeploy run --artifacts artifacts/llamagen-xl --class 207 --cfg-scale 4 --top-k 2000   # LlamaGen, guided
"""


@click.command(epilog=RUN_EXAMPLE)
@click.argument("input", required=False, type=click.Path(path_type=Path))
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path), help=ARTIFACTS)
@click.option("--backend", type=BACKEND, default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--device", type=DEVICE, default=None, help=DEVICE_HELP)
@click.option("--num-samples", type=int, default=DEFAULT_NUM_SAMPLES, show_default=True,
              help="Images to sample; beyond the backend's batch limit they run in batches (same images).")
@click.option("--temperature", type=float, default=DEFAULT_TEMPERATURE, show_default=True,
              help="Divides the logits: < 1 sharper, > 1 more varied; 0 = greedy (always the most likely token); "
                   "otherwise 1e-4..1e4.")
@click.option("--top-k", type=int, default=DEFAULT_TOP_K, show_default=True,
              help="Sample among the k most likely tokens; 1 = greedy; more than the vocabulary keeps all.")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling: the most likely tokens with mass p, in (0, 1].")
@click.option("--cfg-scale", type=float, default=None,
              help="Classifier-free guidance (models with a null class, e.g. LlamaGen): sample from "
                   "uncond + (cond - uncond) * S, S > 1 (1 = off; LlamaGen samples with 1.5-4).")
@click.option("--cfg-interval", type=int, default=None,
              help="With --cfg-scale: guide the first N + 2 tokens only (LlamaGen's cfg_interval); -1 = all.")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True,
              help="0 <= seed < 2^63; sample i of a seed is the same on every backend and batch size.")
@click.option("--class", "class_id", type=int, default=None, help="Class id for class-conditional models.")
@click.option("--size", default=None,
              help="Output size S or WxH (width x height) in pixels; default: the trained size (the input is "
                   "resized to it); larger uses sliding-window sampling.")
@click.option("--out", default="samples/sample.png", show_default=True, type=click.Path(path_type=Path),
              help="Output image: .png, .jpg/.jpeg or .webp (the extension names the format); with several samples "
                   "NAME-0.EXT, NAME-1.EXT, ... unless --grid; '-' writes a PNG to stdout. Only a new name or a "
                   "regular file is replaced (a symlink, FIFO or device is refused).")
@click.option("--grid", is_flag=True, help="Write all samples into one grid image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (timings, tokens/s, backend, seed).")
@click.option("--ckpt", default=None, help="torch backend: checkpoint to use instead of the exported one.")
@click.option("--decoding", type=DECODING, default="sequential", show_default=True, help=DECODING_HELP)
@click.option("--jacobi-window", type=int, default=DEFAULT_WINDOW, show_default=True, help=JACOBI_WINDOW_HELP)
@click.option("--sampler", type=click.Choice(SAMPLERS), default="host", show_default=True,
              help=SAMPLER_HELP)
@click.option("--max-pixels", type=int, default=None,
              help="Largest condition or output image in pixels (default: 16x the trained area).")
@click.option("--cuda-graphs", is_flag=True, help=CUDA_GRAPHS_HELP)
@click.option("--save-layout", is_flag=True,
              help="Object-layout models: also write the layout the model got (boxes or points with category "
                   "numbers) as OUT's name + '-layout.png'.")
@click.option("--build-engines/--no-build-engines", default=False, envvar="VQDEPLOY_BUILD_ENGINES",
              show_envvar=True,
              help="With a GPU and TensorRT, first build the TensorRT engines into ARTIFACTS/engines/ when they are "
                   "missing or outdated (the GPU image's first start); current engines are reused.")
def run(input: Path | None, artifacts: Path, backend: str, device: str | None, num_samples: int, temperature: float,
        top_k: int, top_p: float | None, cfg_scale: float | None, cfg_interval: int | None, seed: int,
        class_id: int | None, size: str | None, out: Path, grid: bool, as_json: bool, ckpt: str | None,
        decoding: str, jacobi_window: int, sampler: str, max_pixels: int | None, cuda_graphs: bool,
        save_layout: bool, build_engines: bool) -> None:
    """Sample images: encode the condition INPUT, sample tokens with the KV cache, decode.

    INPUT is the condition image the model was trained on (`vqdeploy inspect` or manifest.json
    model.conditioning.preprocessing.input says which: e.g. a label PNG of class ids, or a sketch of dark
    strokes on a white background); object-layout (scene) models take a scene JSON file (`vqdeploy inspect`
    shows what it holds); class-conditional and unconditional models take none."""
    if max_pixels is not None:
        check_int(max_pixels, "--max-pixels", 1, 2**40)
    params = sampling_options(temperature, top_k, top_p, cfg_scale, cfg_interval)
    if as_json and str(out) == "-":
        raise InputError("--json and --out - both write to stdout; pass a file name for --out")
    if build_engines:
        ensure.ensure_engines(artifacts, backend, device, echo=lambda m: click.echo(m, err=True))
    options = RunOptions(backend, device, sampler, cuda_graphs, ckpt, num_samples, params, seed, class_id, size,
                         max_pixels, out, grid, save_layout, decoding, check_window(jacobi_window))
    summary = run_pipeline(input, artifacts, options, log=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(summary, indent=2))


def sampling_options(temperature: float, top_k: int | None, top_p: float | None, cfg_scale: float | None = None,
                     cfg_interval: int | None = None) -> SamplingParams:
    """The sampling options, checked with the names the user typed."""
    check_temperature(temperature, "--temperature")
    if top_k is not None:
        check_int(top_k, "--top-k", 1, MAX_TOP_K)
    if top_p is not None:
        check_finite(top_p, "--top-p", low=0.0, high=1.0, low_open=True)
    if cfg_scale is not None:
        check_finite(cfg_scale, "--cfg-scale", low=1.0, high=MAX_CFG_SCALE)
    if cfg_interval is not None:
        if cfg_scale is None:
            raise InputError("--cfg-interval applies to guided sampling: pass --cfg-scale S too")
        check_int(cfg_interval, "--cfg-interval", -1, MAX_CFG_INTERVAL)
    return SamplingParams(temperature, top_k, top_p, 1.0 if cfg_scale is None else cfg_scale,
                          -1 if cfg_interval is None else cfg_interval)
