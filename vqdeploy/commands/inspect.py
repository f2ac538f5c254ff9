"""``vqdeploy inspect``: what a checkpoint (or an exported artifacts directory) is, as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vqdeploy.artifacts import Artifacts
from vqdeploy.commands.options import llamagen_options, llamagen_values
from vqdeploy.needs_torch import require_torch


@click.command(epilog="""\b
Examples:
  vqdeploy inspect logs/2020-11-09T13-31-51_sflckr      # a run directory, or its checkpoints/last.ckpt
  vqdeploy inspect artifacts/demo                        # exported artifacts: their manifest's model entry
  vqdeploy inspect c2i_B_256.pt --vq-ckpt vq_ds16_c2i.pt  # a LlamaGen pair
""")
@click.argument("ckpt", type=click.Path(path_type=str))
@click.option("--config", type=click.Path(path_type=str), help="Model config YAML (default: <run>/configs/*-project.yaml).")
@click.option("--object-classes", type=click.IntRange(1, 1 << 24), default=None,
              help="Object-layout models whose data config states no no_object_classes: the number of categories.")
@llamagen_options
def inspect(ckpt: str, config: str | None, object_classes: int | None, vq_ckpt: str | None, gpt_model: str | None,
            n_head: int | None, image_size: int | None, num_classes: int | None) -> None:
    """Load a checkpoint and print what it is (kind, conditioning, token grid) as JSON; for an object-layout
    model, conditioning.input says what a scene file must contain. An artifacts directory is described by its
    manifest (no PyTorch needed)."""
    path = Path(ckpt)
    if path.is_dir() and (path / "manifest.json").exists():
        manifest = Artifacts.open(path).manifest
        click.echo(json.dumps({"artifacts": str(path), "precision": manifest.precision,
                               "graphs": sorted(manifest.graphs), "model": manifest.raw["model"]}, indent=2))
        return
    family_options = llamagen_values(vq_ckpt, gpt_model, n_head, image_size, num_classes)
    require_torch("inspect loads the checkpoint with PyTorch")
    from vqdeploy.families import family_for  # imports torch

    options = {"object_classes": object_classes} if object_classes is not None else {}
    options.update(family_options)
    family = family_for(ckpt, options)
    click.echo(json.dumps(family.describe(family.load(ckpt, config, **options)), indent=2))
