"""``vqdeploy bench``."""

from __future__ import annotations

from pathlib import Path

import click

from vqdeploy.bench.benchmark import run_bench
from vqdeploy.commands.options import ARTIFACTS, DECODING, DEVICE, DEVICE_HELP, JACOBI_WINDOW_HELP
from vqdeploy.limits import MAX_CFG_SCALE, MAX_TOP_K
from vqdeploy.runtime.jacobi import DEFAULT_WINDOW, check_window
from vqdeploy.runtime.sampling import DEFAULT_TOP_K, SamplingParams


@click.command(epilog="""\b
Example:
  vqdeploy bench --artifacts artifacts/demo --num-samples 4 --no-reference
  vqdeploy bench --artifacts artifacts/demo --compare artifacts/demo-fp16 --compare artifacts/demo-int4
""")
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path), help=ARTIFACTS)
@click.option("--backends", default="auto", show_default=True, help="Comma list, or 'auto' for every available one.")
@click.option("--device", type=DEVICE, default=None, help=DEVICE_HELP)
@click.option("--num-samples", type=int, default=1, show_default=True, help="Batch size of the timed runs.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed runs per stage (the median is shown).")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Time the upstream-style sampler (full recomputation per token).")
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="JSON results (default: ARTIFACTS/bench.json); '-' writes them to stdout.")
@click.option("--ckpt", default=None, help="Reference checkpoint (default: the exported one).")
@click.option("--cuda-graphs", is_flag=True, help="GPU backends: also time them with CUDA graphs (rows side by side).")
@click.option("--decoding", type=DECODING, default="sequential", show_default=True,
              help="jacobi: time speculative Jacobi decoding (host sampler) next to the sequential loop.")
@click.option("--jacobi-window", type=int, default=DEFAULT_WINDOW, show_default=True, help=JACOBI_WINDOW_HELP)
@click.option("--compare", multiple=True, type=click.Path(path_type=Path),
              help="Other artifacts of the same model (e.g. --quantize int4, --precision fp16): rows side by side.")
@click.option("--top-k", type=click.IntRange(1, MAX_TOP_K), default=DEFAULT_TOP_K, show_default=True,
              help="Top-k of the timed sampling (LlamaGen samples with 2000).")
@click.option("--cfg-scale", type=click.FloatRange(1.0, MAX_CFG_SCALE), default=1.0, show_default=True,
              help="Classifier-free guidance (models with a null class): > 1 runs two transformer rows per sample.")
@click.option("--full-attention", is_flag=True,
              help="ONNX Runtime CPU: also time the portable transformer graph, whose steps attend over the whole "
                   "cache capacity, next to its valid-length twin (rows side by side).")
def bench(artifacts: Path, backends: str, device: str | None, num_samples: int, repeats: int, reference: bool,
          out: Path | None, ckpt: str | None, cuda_graphs: bool, decoding: str, jacobi_window: int,
          compare: tuple[Path, ...], top_k: int, cfg_scale: float, full_attention: bool) -> None:
    """Per-stage latency and tokens/s for each backend, next to the reference sampler, in one run."""
    run_bench(artifacts, backends, device, num_samples, repeats, reference, out or artifacts / "bench.json", ckpt,
              log=lambda m: click.echo(m, err=True), cuda_graphs=cuda_graphs, compare=list(compare),
              decoding=decoding, jacobi_window=check_window(jacobi_window),
              params=SamplingParams(temperature=1.0, top_k=top_k, cfg_scale=cfg_scale), full_attention=full_attention)
