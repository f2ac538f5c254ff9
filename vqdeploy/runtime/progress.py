"""A token progress bar on stderr (silent when stderr is not a terminal, e.g. in CI logs)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

Tick = Callable[[int], None]


class TokenProgress:
    """Started by the pipeline with the number of tokens (known only once the grid is)."""

    def __init__(self, log: Callable[[str], None], label: str = "tokens") -> None:
        self.log = log
        self.label = label
        self.bar: Any = None

    def __call__(self, total: int, what: str) -> Tick:
        self.log(what)
        if not sys.stderr.isatty():
            return lambda n: None
        import click

        self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True, show_eta=True)
        self.bar.__enter__()
        return self.bar.update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
