"""Conditioning kinds: one class each (``base.Condition``), registered by name (``registry``).

Importing this package registers every kind; a new kind is one module here and one import below.
"""

from vqdeploy.conditions import class_label, coordinates, image, objects, unconditional  # noqa: F401  (registration)
from vqdeploy.conditions.base import (
                                      ClassId,
                                      Condition,
                                      ConditionInput,
                                      CoordinateInput,
                                      ImageInput,
                                      LayoutInput,
                                      NoInput,
                                      Reading,
)
from vqdeploy.conditions.registry import CONDITIONS, condition_from_manifest, register, schema

__all__ = ["CONDITIONS", "ClassId", "Condition", "ConditionInput", "CoordinateInput", "ImageInput", "LayoutInput",
           "NoInput", "Reading", "condition_from_manifest", "register", "schema"]
