"""A token progress bar on stderr (silent when stderr is not a terminal, e.g. in CI logs)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def token_progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    import click

    if not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True) as bar:
        yield bar.update
