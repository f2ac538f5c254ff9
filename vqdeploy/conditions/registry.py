"""The conditioning kinds by name: the manifest schema and ``read_manifest`` find a kind here, never by
testing its name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from vqdeploy.conditions.base import CONDITIONS, Condition
from vqdeploy.schema import Rule, tagged

C = TypeVar("C", bound=type[Condition])


def register(cls: C) -> C:
    """Class decorator: ``cls`` handles manifests whose ``model.conditioning.kind`` is ``cls.kind``."""
    if cls.kind in CONDITIONS:
        raise ValueError(f"conditioning kind '{cls.kind}' registered twice")
    CONDITIONS[cls.kind] = cls
    return cls


def schema() -> Rule:
    """``model.conditioning``: the entry of whichever kind it names."""
    return tagged("kind", {k: c.schema for k, c in CONDITIONS.items()})


def condition_from_manifest(entry: Mapping[str, Any], where: str) -> Condition:
    """A schema-valid ``model.conditioning`` entry as its kind's object."""
    return CONDITIONS[entry["kind"]].from_manifest(entry, where)
