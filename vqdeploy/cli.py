"""The ``vqdeploy`` command line: thin wrappers over the library API.

Every command turns a ``VQDeployError`` (bad input or environment) or a bad option value into one
``error:`` line on stderr and a non-zero exit; an unexpected exception (a bug in vqdeploy) is
reported the same way as "internal error", with the traceback only when ``VQDEPLOY_DEBUG=1``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from vqdeploy.errors import VQDeployError


def _one_line(e: click.ClickException, command: str) -> None:
    hint = f" (see: vqdeploy {command} --help)".replace("  ", " ") if isinstance(e, click.UsageError) else ""
    click.echo(f"error: {' '.join(e.format_message().split())}{hint}", err=True)
    sys.exit(e.exit_code)


class _Group(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `vqdeploy`: click prints the help
                raise
            _one_line(e, "")

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VQDeployError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as e:  # a bad option value or usage: one line too, with where to look
            _one_line(e, ctx.invoked_subcommand or "")
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # a bug in vqdeploy: still one line unless debugging
            if os.environ.get("VQDEPLOY_DEBUG"):
                raise
            click.echo(f"error: internal error: {type(e).__name__}: {e} (set VQDEPLOY_DEBUG=1 for the traceback)", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vqdeploy")
def main() -> None:
    """Deploy taming-transformers models: export to ONNX, build TensorRT engines, sample."""


@main.command(epilog="""\b
Example:
  vqdeploy inspect logs/2020-11-09T13-31-51_sflckr      # a run directory, or its checkpoints/last.ckpt
""")
@click.argument("ckpt", type=click.Path(path_type=str))
@click.option("--config", type=click.Path(path_type=str), help="Model config YAML (default: <run>/configs/*-project.yaml).")
@click.option("--object-classes", type=click.IntRange(1, 1 << 24), default=None,
              help="Object-layout models whose data config states no no_object_classes: the number of categories.")
def inspect(ckpt: str, config: str | None, object_classes: int | None) -> None:
    """Load a checkpoint and print what it is (kind, conditioning, token grid) as JSON; for an object-layout
    model, conditioning.input says what a scene file must contain."""
    from vqdeploy.needs_torch import require_torch

    require_torch("inspect loads the checkpoint with PyTorch")
    from vqdeploy.describe import describe
    from vqdeploy.loading.load import load_model

    model = load_model(ckpt, config, object_classes=object_classes)
    click.echo(json.dumps(describe(model), indent=2))


from vqdeploy.export.command import export

main.add_command(export)

from vqdeploy.runtime.command import bench, parity, run

main.add_command(run)
main.add_command(parity)
main.add_command(bench)

from vqdeploy.trt.command import build_trt

main.add_command(build_trt)

from vqdeploy.serve.command import serve

main.add_command(serve)
