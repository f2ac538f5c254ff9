"""The ``vqdeploy`` command line: thin wrappers over the library API.

Every command turns a ``VQDeployError`` (bad input or environment), an ``OSError`` (no space, a
read-only file system, a name too long, no permission, too many open files: the environment, not a
bug) or a bad option value into one ``error:`` line on stderr and exit 1 (or the error's code); an
unexpected exception (a bug in vqdeploy) is reported the same way as "internal error" (exit 2), with
the traceback only when ``VQDEPLOY_DEBUG=1``. The line is one line whatever it quotes: non-printable
characters (a newline in a file name) are escaped.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from vqdeploy.errors import VQDeployError, one_line, os_error


def _error(message: str, code: int) -> None:
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


def _one_line(e: click.ClickException, command: str) -> None:
    hint = f" (see: vqdeploy {command} --help)".replace("  ", " ") if isinstance(e, click.UsageError) else ""
    _error(f"{' '.join(e.format_message().split())}{hint}", e.exit_code)


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
            _error(str(e), e.exit_code)
        except OSError as e:  # the environment (a full disk, a read-only file system, ...), not a bug
            if os.environ.get("VQDEPLOY_DEBUG"):
                raise
            _error(str(os_error(e)), 1)
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
            _error(f"internal error: {type(e).__name__}: {e} (set VQDEPLOY_DEBUG=1 for the traceback)", 2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vqdeploy")
def main() -> None:
    """Deploy taming-transformers models: export to ONNX, build TensorRT engines, sample."""


from vqdeploy.commands import COMMANDS  # noqa: E402  (the group first, then its commands)

for command in COMMANDS:
    main.add_command(command)
