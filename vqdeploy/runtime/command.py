"""``vqdeploy run``, ``vqdeploy parity`` and ``vqdeploy bench``."""

from __future__ import annotations

import json
from pathlib import Path

import click

_BACKEND = click.Choice(["auto", "torch", "onnxruntime", "tensorrt"])


@click.command()
@click.argument("input", required=False, type=click.Path(path_type=Path))
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path))
@click.option("--backend", type=_BACKEND, default="auto", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: cuda when available.")
@click.option("--num-samples", type=int, default=1, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=100, show_default=True, help="1 = greedy.")
@click.option("--top-p", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--class", "class_id", type=int, default=None, help="Class id for class-conditional models.")
@click.option("--size", default=None, help="Output size WxH; larger than trained uses sliding-window sampling.")
@click.option("--out", default="samples/sample.png", show_default=True, type=click.Path(path_type=Path))
@click.option("--grid", is_flag=True, help="Write all samples into one grid image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (timings, tokens/s, backend, seed).")
@click.option("--ckpt", default=None, help="torch backend: checkpoint to use instead of the exported one.")
@click.option("--sampler", type=click.Choice(["host", "graph"]), default="host", show_default=True,
              help="graph: the exported sampler graph on the backend's device (logits never leave it).")
@click.option("--max-pixels", type=int, default=None,
              help="Largest condition or output image in pixels (default: 16x the trained area).")
def run(input: Path | None, artifacts: Path, backend: str, device: str | None, num_samples: int, temperature: float,
        top_k: int, top_p: float | None, seed: int, class_id: int | None, size: str | None, out: Path, grid: bool,
        as_json: bool, ckpt: str | None, sampler: str, max_pixels: int | None) -> None:
    """Sample images: encode the condition INPUT, sample tokens with the KV cache, decode."""
    from vqdeploy.limits import check_int
    from vqdeploy.runtime.run import run_pipeline

    if max_pixels is not None:
        check_int(max_pixels, "--max-pixels", 1, 2**40)
    summary = run_pipeline(input, artifacts, backend, device, num_samples, temperature, top_k, top_p, seed,
                           class_id, size, out, grid, ckpt, log=lambda m: click.echo(m, err=True), sampler=sampler,
                           max_pixels=max_pixels)
    if as_json:
        click.echo(json.dumps(summary, indent=2))


@click.command()
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path))
@click.option("--backends", default="auto", show_default=True, help="Comma list, or 'auto' for every available one.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Report directory (default: ARTIFACTS/parity).")
@click.option("--ckpt", default=None, help="Reference checkpoint (default: the exported one).")
def parity(artifacts: Path, backends: str, device: str | None, seed: int, out: Path | None, ckpt: str | None) -> None:
    """Compare every available backend with the PyTorch reference, stage by stage (JSON + HTML)."""
    from vqdeploy.runtime.parity_report import run_parity

    run_parity(artifacts, backends, device, seed, out or artifacts / "parity", ckpt, log=lambda m: click.echo(m, err=True))


@click.command()
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path))
@click.option("--backends", default="auto", show_default=True, help="Comma list, or 'auto' for every available one.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--num-samples", type=int, default=1, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Time the upstream-style sampler (full recomputation per token).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="JSON results (default: ARTIFACTS/bench.json).")
@click.option("--ckpt", default=None, help="Reference checkpoint (default: the exported one).")
def bench(artifacts: Path, backends: str, device: str | None, num_samples: int, repeats: int, reference: bool,
          out: Path | None, ckpt: str | None) -> None:
    """Per-stage latency and tokens/s for each backend, next to the reference sampler, in one run."""
    from vqdeploy.runtime.bench import run_bench

    run_bench(artifacts, backends, device, num_samples, repeats, reference, out or artifacts / "bench.json", ckpt,
              log=lambda m: click.echo(m, err=True))
