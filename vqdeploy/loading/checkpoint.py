"""Reading weights from untrusted checkpoint files without running any of their code.

Lightning checkpoints are pickles that, besides tensors, reference classes of the training
framework (``ModelCheckpoint`` callbacks keyed by class, ``AttributeDict`` hyper-parameters,
OmegaConf containers). We list every global a pickle references *before* loading it
(``torch.serialization.get_unsafe_globals_in_checkpoint`` reads opcodes, it executes nothing),
refuse anything outside a short allowlist of framework namespaces, and let torch's weights-only
unpickler rebuild the allowed ones as inert placeholders: the real classes are never imported,
so no code from the checkpoint or its framework can run. Tensors are memory-mapped, so a 4 GB
``last.ckpt`` that is mostly optimizer state costs only the model weights in RAM.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from vqdeploy.errors import CheckpointError

# Namespaces whose objects may appear *beside* the weights in a training checkpoint. They are
# replaced by placeholders (never imported), so even a malicious reference into them is inert.
INERT_NAMESPACES = (
    "pytorch_lightning.",
    "lightning.",
    "lightning_fabric.",
    "omegaconf.",
    "argparse.Namespace",
    "pathlib.",
    "numpy.",
    "collections.defaultdict",
)


class Inert:
    """Stand-in for a non-tensor object of a training framework. Stores its state, runs nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args = args

    def __setstate__(self, state: object) -> None:
        self.state = state


def _placeholder(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (Inert,), {"__qualname__": name, "__module__": "vqdeploy.inert"})


def _is_inert(name: str) -> bool:
    return any(name == ns or name.startswith(ns) for ns in INERT_NAMESPACES)


def _check_globals(path: Path) -> list[tuple[type, str]]:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({_short(e)})") from None
    refused = [n for n in names if not _is_inert(n)]
    if refused:
        raise CheckpointError(
            f"{path}: refused to load: the checkpoint's pickle references {', '.join(sorted(refused))}, "
            "which could run code; only tensors and training-framework metadata are accepted"
        )
    return [(_placeholder(n), n) for n in names]


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _load_torch(path: Path) -> Any:
    allowed = _check_globals(path)
    mmap = zipfile.is_zipfile(path)  # the legacy (pre-1.6) format cannot be memory-mapped
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load: {_short(e)}") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({_short(e)})") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors file ({_short(e)})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a Lightning ``.ckpt``, a plain state_dict file or ``.safetensors``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"not a checkpoint file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty checkpoint file")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    obj = _load_torch(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning layout; optimizer states stay unread on disk
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: no state_dict found (expected a Lightning checkpoint or a dict of tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the state_dict holds non-tensor entries (e.g. {bad[0]!r})")
    return obj
