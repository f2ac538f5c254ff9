"""Import upstream taming-transformers (PyPI ``taming-transformers-rom1504==0.0.6``) on torch 2.x.

Only the *imports* around the model code are shimmed; every module under test (encoder,
decoder, quantizers, minGPT, Net2NetTransformer, permuters) is upstream's own code:
- ``taming.main`` imports torchvision and Lightning utilities removed in Lightning 2; we provide
  its two config helpers (``instantiate_from_config``, ``get_obj_from_str``), unchanged in logic.
- ``taming.modules.transformer.mingpt`` imports ``top_k_top_p_filtering``, which transformers
  removed; it is only used by ``sample_with_past``, which we do not test.
- ``DummyLoss`` lives next to LPIPS, which imports torchvision and downloads VGG weights.
- ``pytorch_lightning`` (if not installed) only provides ``LightningModule`` as a base class.
"""

from __future__ import annotations

import importlib
import sys
import types

import torch


def _module(name: str, **attrs: object) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def install() -> None:
    if getattr(install, "done", False):
        return
    try:
        import pytorch_lightning  # noqa: F401
    except ImportError:
        class LightningModule(torch.nn.Module):
            def print(self, *args: object, **kwargs: object) -> None:
                pass

        _module("pytorch_lightning", LightningModule=LightningModule)

    def get_obj_from_str(string: str, reload: bool = False) -> object:
        module, cls = string.rsplit(".", 1)
        return getattr(importlib.import_module(module, package=None), cls)

    def instantiate_from_config(config: dict) -> object:
        if "target" not in config:
            raise KeyError("Expected key `target` to instantiate.")
        return get_obj_from_str(config["target"])(**config.get("params", {}))

    import taming  # noqa: F401  (the package itself imports nothing)

    _module("taming.main", instantiate_from_config=instantiate_from_config, get_obj_from_str=get_obj_from_str)
    _module("transformers", top_k_top_p_filtering=lambda *a, **k: (_ for _ in ()).throw(NotImplementedError()))

    class LPIPS(torch.nn.Module):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("LPIPS is not available in tests")

    _module("taming.modules.losses.lpips", LPIPS=LPIPS)
    install.done = True  # type: ignore[attr-defined]


def upstream():
    """The upstream modules, after the shims."""
    install()
    from taming.models import cond_transformer, vqgan
    from taming.modules.transformer import mingpt, permuter
    from taming.modules.vqvae import quantize

    return types.SimpleNamespace(
        cond_transformer=cond_transformer, vqgan=vqgan, mingpt=mingpt, permuter=permuter, quantize=quantize,
        instantiate_from_config=sys.modules["taming.main"].instantiate_from_config,
    )
