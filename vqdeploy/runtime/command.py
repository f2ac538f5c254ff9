"""``vqdeploy run``, ``vqdeploy parity`` and ``vqdeploy bench``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vqdeploy.runtime.backends.devices import BACKEND_CHOICES, DEVICES
from vqdeploy.runtime.generator import SAMPLERS
from vqdeploy.runtime.sampling import DEFAULT_NUM_SAMPLES, DEFAULT_SEED, DEFAULT_TEMPERATURE, DEFAULT_TOP_K

_BACKEND = click.Choice(BACKEND_CHOICES)


_ARTIFACTS = "Artifacts directory written by `vqdeploy export`."
_DEVICE_HELP = ("Default: per backend - onnxruntime on cuda only with onnxruntime-gpu and a GPU, tensorrt on cuda, "
                "torch on cuda when torch sees a GPU; the choice is printed.")
_CUDA_GRAPHS_HELP = ("GPU: capture the one-token step as a CUDA graph once per batch size and replay it "
                     "(ONNX Runtime CUDA, TensorRT, torch); not yet measured on a GPU, so off by default.")
_BACKEND_HELP = "auto: TensorRT when engines and a GPU are there, else ONNX Runtime; torch runs the checkpoint."

RUN_EXAMPLE = """\b
Examples:
  vqdeploy run sketch.png --artifacts artifacts/demo --num-samples 4 --seed 0 --out samples/s.png
  vqdeploy run labels.png --artifacts artifacts/sflckr --size 512x256 --top-k 100   # wider: sliding window
  vqdeploy run --artifacts artifacts/imagenet --class 281 --temperature 0           # greedy
"""


@click.command(epilog=RUN_EXAMPLE)
@click.argument("input", required=False, type=click.Path(path_type=Path))
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path), help=_ARTIFACTS)
@click.option("--backend", type=_BACKEND, default="auto", show_default=True, help=_BACKEND_HELP)
@click.option("--device", type=click.Choice(DEVICES), default=None, help=_DEVICE_HELP)
@click.option("--num-samples", type=int, default=DEFAULT_NUM_SAMPLES, show_default=True,
              help="Images to sample; beyond the backend's batch limit they run in batches (same images).")
@click.option("--temperature", type=float, default=DEFAULT_TEMPERATURE, show_default=True,
              help="Divides the logits: < 1 sharper, > 1 more varied; 0 = greedy (always the most likely token).")
@click.option("--top-k", type=int, default=DEFAULT_TOP_K, show_default=True,
              help="Sample among the k most likely tokens; 1 = greedy; more than the vocabulary keeps all.")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling: the most likely tokens with mass p, in (0, 1].")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True,
              help="0 <= seed < 2^63; sample i of a seed is the same on every backend and batch size.")
@click.option("--class", "class_id", type=int, default=None, help="Class id for class-conditional models.")
@click.option("--size", default=None,
              help="Output size S or WxH (width x height) in pixels; default: the trained size (the input is "
                   "resized to it); larger uses sliding-window sampling.")
@click.option("--out", default="samples/sample.png", show_default=True, type=click.Path(path_type=Path),
              help="Output PNG; with several samples NAME-0.png, NAME-1.png, ... unless --grid.")
@click.option("--grid", is_flag=True, help="Write all samples into one grid image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (timings, tokens/s, backend, seed).")
@click.option("--ckpt", default=None, help="torch backend: checkpoint to use instead of the exported one.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="host", show_default=True,
              help="graph: the exported sampler graph on the backend's device (logits never leave it).")
@click.option("--max-pixels", type=int, default=None,
              help="Largest condition or output image in pixels (default: 16x the trained area).")
@click.option("--cuda-graphs", is_flag=True, help=_CUDA_GRAPHS_HELP)
@click.option("--save-layout", is_flag=True,
              help="Object-layout models: also write the layout the model got (boxes or points with category "
                   "numbers) as OUT's name + '-layout.png'.")
@click.option("--build-engines/--no-build-engines", default=False, envvar="VQDEPLOY_BUILD_ENGINES",
              show_envvar=True,
              help="With a GPU and TensorRT, first build the TensorRT engines into ARTIFACTS/engines/ when they are "
                   "missing or outdated (the GPU image's first start); current engines are reused.")
def run(input: Path | None, artifacts: Path, backend: str, device: str | None, num_samples: int, temperature: float,
        top_k: int, top_p: float | None, seed: int, class_id: int | None, size: str | None, out: Path, grid: bool,
        as_json: bool, ckpt: str | None, sampler: str, max_pixels: int | None, cuda_graphs: bool,
        save_layout: bool, build_engines: bool) -> None:
    """Sample images: encode the condition INPUT, sample tokens with the KV cache, decode.

    INPUT is the condition image the model was trained on (`vqdeploy inspect` or manifest.json
    model.conditioning.preprocessing.input says which: e.g. a label PNG of class ids, or a sketch of dark
    strokes on a white background); object-layout (scene) models take a scene JSON file (`vqdeploy inspect`
    shows what it holds); class-conditional and unconditional models take none."""
    from vqdeploy.limits import check_int
    from vqdeploy.runtime.run import run_pipeline

    if max_pixels is not None:
        check_int(max_pixels, "--max-pixels", 1, 2**40)
    if build_engines:
        from vqdeploy.trt.ensure import ensure_engines

        ensure_engines(artifacts, backend, device, echo=lambda m: click.echo(m, err=True))
    summary = run_pipeline(input, artifacts, backend, device, num_samples, temperature, top_k, top_p, seed,
                           class_id, size, out, grid, ckpt, log=lambda m: click.echo(m, err=True), sampler=sampler,
                           max_pixels=max_pixels, cuda_graphs=cuda_graphs, save_layout=save_layout)
    if as_json:
        click.echo(json.dumps(summary, indent=2))


@click.command(epilog="""\b
Example:
  vqdeploy parity --artifacts artifacts/demo --backends onnxruntime,torch   # then open artifacts/demo/parity/report.html
""")
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path), help=_ARTIFACTS)
@click.option("--backends", default="auto", show_default=True, help="Comma list, or 'auto' for every available one.")
@click.option("--device", type=click.Choice(DEVICES), default=None, help=_DEVICE_HELP)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the parity inputs and samples.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Report directory (default: ARTIFACTS/parity).")
@click.option("--ckpt", default=None, help="Reference checkpoint (default: the exported one).")
def parity(artifacts: Path, backends: str, device: str | None, seed: int, out: Path | None, ckpt: str | None) -> None:
    """Compare every available backend with the PyTorch reference, stage by stage (JSON + HTML)."""
    from vqdeploy.needs_torch import require_torch

    require_torch("parity compares against PyTorch and needs it")
    from vqdeploy.runtime.parity_report import run_parity

    run_parity(artifacts, backends, device, seed, out or artifacts / "parity", ckpt, log=lambda m: click.echo(m, err=True))


@click.command(epilog="""\b
Example:
  vqdeploy bench --artifacts artifacts/demo --num-samples 4 --no-reference
  vqdeploy bench --artifacts artifacts/demo --compare artifacts/demo-fp16 --compare artifacts/demo-int4
""")
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path), help=_ARTIFACTS)
@click.option("--backends", default="auto", show_default=True, help="Comma list, or 'auto' for every available one.")
@click.option("--device", type=click.Choice(DEVICES), default=None, help=_DEVICE_HELP)
@click.option("--num-samples", type=int, default=1, show_default=True, help="Batch size of the timed runs.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed runs per stage (the median is shown).")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Time the upstream-style sampler (full recomputation per token).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="JSON results (default: ARTIFACTS/bench.json).")
@click.option("--ckpt", default=None, help="Reference checkpoint (default: the exported one).")
@click.option("--cuda-graphs", is_flag=True, help="GPU backends: also time them with CUDA graphs (rows side by side).")
@click.option("--compare", multiple=True, type=click.Path(path_type=Path),
              help="Other artifacts of the same model (e.g. --quantize int4, --precision fp16): rows side by side.")
def bench(artifacts: Path, backends: str, device: str | None, num_samples: int, repeats: int, reference: bool,
          out: Path | None, ckpt: str | None, cuda_graphs: bool, compare: tuple[Path, ...]) -> None:
    """Per-stage latency and tokens/s for each backend, next to the reference sampler, in one run."""
    from vqdeploy.runtime.bench import run_bench

    run_bench(artifacts, backends, device, num_samples, repeats, reference, out or artifacts / "bench.json", ckpt,
              log=lambda m: click.echo(m, err=True), cuda_graphs=cuda_graphs, compare=list(compare))
