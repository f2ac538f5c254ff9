"""``vqdeploy build-trt`` (TensorRT is imported only when the command runs)."""

from __future__ import annotations

from pathlib import Path

import click

from vqdeploy.errors import ConfigError
from vqdeploy.trt import profiles
from vqdeploy.trt.engines import BuildOptions, build_engines


def parse_bytes(text: str) -> int:
    """'4G', '512M', '1073741824' -> bytes (binary units)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise ConfigError(f"--workspace {text!r}: expected a size such as 4G or 512M") from None
    if value < 1:
        raise ConfigError(f"--workspace {text!r}: must be positive")
    return int(value)


@click.command("build-trt", epilog="""\b
Examples:
  vqdeploy build-trt --artifacts artifacts/demo                     # for the GPU of this machine
  vqdeploy build-trt --artifacts artifacts/demo --target-cc 8.6,8.9  # TensorRT-RTX, ahead of time, no GPU needed
""")
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=str),
              help="Artifacts directory written by `vqdeploy export`; engines go to <artifacts>/engines/.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]),
              help="Must match the exported graphs (engines are strongly typed); default: the graphs' precision.")
@click.option("--batch", help="Batch range MIN:OPT:MAX (or N) for every profile; default: the manifest's.")
@click.option("--size", help="Image size range in pixels MIN:OPT:MAX, each S or HxW; default: the manifest's.")
@click.option("--target-cc", multiple=True,
              help="Compute capability to build for (TensorRT-RTX, repeatable or comma-separated: 8.6,8.9); "
                   "default: the GPU present.")
@click.option("--workspace", help="Builder workspace limit, e.g. 4G; default: TensorRT's.")
@click.option("--timing-cache", type=click.Path(path_type=Path),
              help="Timing cache file to read and update (datacenter TensorRT), shared across builds.")
@click.option("--graph", "graphs", multiple=True, help="Build only this graph (repeatable); default: all.")
@click.option("--force", is_flag=True, help="Rebuild even when the cache key is unchanged.")
@click.option("--verbose", is_flag=True, help="Write TensorRT's verbose messages to build.log.")
def build_trt(artifacts: str, precision: str | None, batch: str | None, size: str | None, target_cc: tuple[str, ...],
              workspace: str | None, timing_cache: Path | None, graphs: tuple[str, ...], force: bool, verbose: bool) -> None:
    """Build one TensorRT engine per exported graph (cached: unchanged engines are kept)."""
    options = BuildOptions(
        precision=precision,
        batch=profiles.parse_range(batch, "--batch") if batch else None,
        size=profiles.parse_size(size) if size else None,
        target_cc=[c for arg in target_cc for c in arg.split(",") if c.strip()],
        workspace=parse_bytes(workspace) if workspace else None,
        timing_cache=timing_cache,
        verbose=verbose,
        force=force,
        graphs=graphs,
    )
    build_engines(artifacts, options, echo=lambda m: click.echo(m, err=True))
