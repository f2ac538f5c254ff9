"""``vqdeploy parity``."""

from __future__ import annotations

from pathlib import Path

import click

from vqdeploy.commands.options import ARTIFACTS, DEVICE, DEVICE_HELP
from vqdeploy.needs_torch import require_torch


@click.command(epilog="""\b
Example:
  vqdeploy parity --artifacts artifacts/demo --backends onnxruntime,torch   # then open artifacts/demo/parity/report.html
  vqdeploy parity --artifacts artifacts/sflckr --input my_segmentation.png
""")
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path), help=ARTIFACTS)
@click.option("--backends", default="auto", show_default=True, help="Comma list, or 'auto' for every available one.")
@click.option("--device", type=DEVICE, default=None, help=DEVICE_HELP)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the parity inputs and samples.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Report directory (default: ARTIFACTS/parity).")
@click.option("--ckpt", default=None, help="Reference checkpoint (default: the exported one).")
@click.option("--input", "input_", default=None, type=click.Path(path_type=Path),
              help="The condition of the sampled images, as `run` takes INPUT (default: the example recorded at "
                   "export, source.example in manifest.json; else a seeded random condition).")
def parity(artifacts: Path, backends: str, device: str | None, seed: int, out: Path | None, ckpt: str | None,
           input_: Path | None) -> None:
    """Compare every available backend with the PyTorch reference, stage by stage (JSON + HTML)."""
    require_torch("parity compares against PyTorch and needs it")
    from vqdeploy.parity.report import run_parity  # imports torch

    run_parity(artifacts, backends, device, seed, out or artifacts / "parity", ckpt, log=lambda m: click.echo(m, err=True),
               input=input_)


