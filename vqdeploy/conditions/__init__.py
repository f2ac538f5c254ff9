"""Conditioning kinds: one class each (``base.Condition``), registered by name (``registry``).

Importing this package registers every kind; a new kind is one module here and one import below.
"""

from vqdeploy.conditions import class_label, coordinates, image, objects, unconditional  # noqa: F401  (registration)
from vqdeploy.conditions.base import Condition
from vqdeploy.conditions.registry import CONDITIONS, condition_from_manifest, describe_condition

__all__ = ["CONDITIONS", "Condition", "condition_from_manifest", "describe_condition"]
