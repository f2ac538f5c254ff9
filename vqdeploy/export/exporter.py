"""``export``: load a checkpoint, write every graph, check parity, write the manifest, and move
the finished directory into place (never a half-written artifacts directory)."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vqdeploy.artifacts import Artifacts, Manifest
from vqdeploy.artifacts.manifest import FORMAT, FORMAT_VERSION, KV_CACHE_DOC, MANIFEST, SAMPLING_DOC
from vqdeploy.artifacts.manifest_schema import VALID_LENGTH, validate  # what is exported must read back
from vqdeploy.artifacts.paths import artifact_file
from vqdeploy.bounds import MAX_BATCH
from vqdeploy.errors import ArtifactError, ConfigError, InputError, ParityError, os_error, shown
from vqdeploy.export import BF16_MIN_OPSET, default_opset
from vqdeploy.export.install import export_lock, install, temp_prefix
from vqdeploy.export.manifest import versions, write_manifest
from vqdeploy.export.onnx_export import export_graph
from vqdeploy.export.quantize import SCHEMES, check_block, quantization_entry
from vqdeploy.families import Family, family_for
from vqdeploy.files import atomic_write, check_writable, default_mode, sha256_file
from vqdeploy.limits import check_int
from vqdeploy.loading.config import run_dir
from vqdeploy.loading.fingerprint import model_fingerprint
from vqdeploy.parity.checks import check_backend
from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from vqdeploy.runtime.backends.torch_backend import TorchBackend
from vqdeploy.schema import read_json

Log = Callable[[str], None]


def _check_destination(out: Path, fingerprint: str) -> None:
    if not os.path.lexists(out):
        return
    if out.is_symlink():
        raise ArtifactError(f"--out {out} is a symlink; pass the directory it points to")
    if not out.is_dir():
        raise ArtifactError(f"--out {out} exists and is not a directory")
    manifest = out / MANIFEST
    if os.path.lexists(manifest):
        # untrusted like any artifacts directory: bounded read, no symlink, any shape
        data = read_json(artifact_file(out, MANIFEST, str(manifest)), str(manifest))
        other = data.get("model_fingerprint") if isinstance(data, dict) else None
        if other != fingerprint:
            raise ArtifactError(f"{out} holds the artifacts of another model; choose another --out or remove it")
    elif any(out.iterdir()):
        raise ArtifactError(f"{out} is not empty and is not a vqdeploy artifacts directory; choose another --out")


_TRIM_FROM_BYTES = 256 * 2**20


def _return_freed_memory() -> None:
    """Hand memory freed since the last call back to the OS. Most weight tensors (up to 32 MB each,
    glibc's largest mmap threshold) live on the malloc heap, whose freed pages glibc keeps unless
    trimmed. Measured on a 1.4 B-parameter model (README, "A 1.4 B-parameter export"): resident when
    parity starts, fp16 7.2 -> 6.3 GiB (the freed fp16 copy), fp32 about 6.6 -> 6.1 GiB (the graphs'
    temporaries); the peak, in parity, moves little (fp16 15.6 -> 15.4 GiB, fp32 13.6 GiB either
    way: ONNX Runtime and PyTorch reuse the freed heap there), but the memory is the machine's again
    while parity loads the graphs. Only for models of at least ``_TRIM_FROM_BYTES`` of weights: a collection
    walks every live object (0.3 s after each graph of the demo's export, about 5% of it), while a small
    model's freed graphs are a few MB."""
    gc.collect()  # the exported programs' reference cycles
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc; absent on other C libraries
    except (OSError, AttributeError):
        pass


EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".json")  # ``<run>/example.*``: what a condition file is


def example_condition(checkpoint: str, given: str | Path | None) -> dict[str, str]:
    """``source.example`` of the manifest: the condition file given (``export --example``), else the run
    directory's ``example.png`` (or .jpg, .jpeg, .webp, .json for a scene) beside ``checkpoints/``, as an
    absolute path like ``source.checkpoint``; nothing where there is none."""
    if given is not None:
        return {"example": str(Path(given).absolute())}
    if Path(checkpoint).parent.name != "checkpoints":  # not a run directory's checkpoint
        return {}
    run = run_dir(Path(checkpoint))
    for suffix in EXAMPLE_SUFFIXES:
        if (run / f"example{suffix}").is_file():
            return {"example": str(run / f"example{suffix}")}
    return {}


def export(
    ckpt: str | Path,
    out: str | Path = "artifacts",
    config: str | Path | None = None,
    precision: str = "fp32",
    opset: int | None = None,
    max_batch: int = 8,
    parity: bool = True,
    log: Log = print,
    quantize: str | None = None,
    object_classes: int | None = None,
    example: str | Path | None = None,
    family_options: dict[str, Any] | None = None,
    quantize_block: int | None = None,
    valid_length: bool = True,
) -> Manifest:
    """Export ``ckpt`` to ``out``; returns the manifest. ``object_classes``: see ``load_model``; the family that loads
    ``ckpt`` is found by ``families.family_for``; ``family_options`` are the family's own load options (LlamaGen's
    ``vq_ckpt``, ``gpt_model``, ``n_head``, ``image_size``, ``num_classes``). Raises
    ParityError beyond tolerance (after writing the report, without installing the artifacts). ``out`` is locked for the whole
    export and replaced atomically (``install``). ``quantize`` (int8/int4): the transformer's
    linear layers weight-only quantized (``export/quantize.py``), its quality checked against the
    fp32 model (``parity/quantized.py``); ``quantize_block``: the block of input channels that share a scale
    (default ``quantize.DEFAULT_BLOCK``: int8 128, int4 32). ``example``: a condition file of this model (a
    sketch, a label map, a scene), recorded as ``source.example`` for ``parity``'s samples; default: the run directory's
    ``example.*`` (``example_condition``). ``valid_length``: also export ONNX Runtime's valid-length twin of the
    transformer where the model allows it (``export/attention_onnx.py``); False: the portable graph only (what
    TensorRT and the C++ runtime load), a smaller export."""
    t0 = time.perf_counter()
    out = Path(out)
    if not out.name or out.name in (".", ".."):
        raise ArtifactError(f"--out {str(out)!r}: name a directory (e.g. artifacts/mymodel)")
    opset = default_opset(precision) if opset is None else opset
    if precision == "bf16" and opset < BF16_MIN_OPSET:
        raise ConfigError(f"--opset {opset}: bf16 graphs need opset {BF16_MIN_OPSET} or later (ONNX Conv and Gemm accept "
                          f"bfloat16 from opset {BF16_MIN_OPSET})")
    check_int(max_batch, "--max-batch", 1, MAX_BATCH)
    if quantize is not None and quantize not in SCHEMES:
        raise ConfigError(f"--quantize {str(quantize)[:20]!r}: expected one of {', '.join(SCHEMES)}")
    if quantize_block is not None:
        if quantize is None:
            raise ConfigError("--quantize-block needs --quantize int8|int4")
        check_block(quantize_block)
    if example is not None and not Path(example).is_file():
        raise InputError(f"--example {example}: not a file (a condition of this model: a sketch, a label map, a scene)")
    check_writable(out.parent, "--out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with export_lock(out, log):
        return _export_locked(ckpt, out, config, precision, opset, max_batch, parity, log, t0, quantize,
                              object_classes, example, family_options, quantize_block, valid_length)


def _export_locked(ckpt: str | Path, out: Path, config: str | Path | None, precision: str, opset: int,
                   max_batch: int, parity: bool, log: Log, t0: float, quantize: str | None = None,
                   object_classes: int | None = None, example: str | Path | None = None,
                   family_options: dict[str, Any] | None = None, quantize_block: int | None = None,
                   valid_length: bool = True) -> Manifest:
    options = {"object_classes": object_classes} if object_classes is not None else {}
    options.update({k: v for k, v in (family_options or {}).items() if v is not None})
    family: Family = family_for(ckpt, options)
    log(f"loading {shown(ckpt)}")
    model = family.load(ckpt, config, **options)
    info = family.describe(model)
    fingerprint = model_fingerprint(model)
    _check_destination(out, fingerprint)
    if quantize is not None and family.quantizable(model) is None:
        raise ConfigError(f"--quantize {quantize}: {ckpt} is a VQGAN without a transformer; only the transformer's "
                          f"weights are quantized")
    specs = [s for s in family.graph_specs(model, precision, max_batch) if valid_length or s.name != VALID_LENGTH]
    big = sum(p.numel() * p.element_size() for p in model.parameters()) >= _TRIM_FROM_BYTES

    try:
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out), dir=out.parent))
    except OSError as e:
        raise os_error(e, out, "write the export to") from None
    tmp.chmod(default_mode(directory=True))  # mkdtemp makes it private; artifacts are ordinary files
    try:
        graphs: dict[str, Any] = {}
        quantization: dict[str, Any] | None = None
        for n, spec in enumerate(specs, 1):
            t = time.perf_counter()
            q = quantize if spec.name in ("transformer", VALID_LENGTH) else None
            log(f"[{n}/{len(specs)}] exporting {spec.file}" + (f" (weights {q})" if q else "") + " ...")
            layers = export_graph(spec, tmp / spec.file, opset, q, block=quantize_block)
            if q and spec.name == "transformer":
                quantization = quantization_entry(q, layers, int(info["transformer"]["parameters"]), precision,
                                                  quantize_block)
            entry = spec.to_manifest()
            entry["sha256"] = sha256_file(tmp / spec.file)
            data = tmp / f"{spec.file}.data"
            if data.exists():
                entry["external_data"] = {"file": data.name, "sha256": sha256_file(data)}
            entry["bytes"] = (tmp / spec.file).stat().st_size + (data.stat().st_size if data.exists() else 0)
            graphs[spec.name] = entry
            if big:
                _return_freed_memory()
            log(f"      {spec.file}: {entry['bytes'] / 1e6:.1f} MB in {time.perf_counter() - t:.1f} s")
        if quantization is not None and VALID_LENGTH in graphs:
            quantization["graphs"].append(VALID_LENGTH)  # quantized alike
        del specs, spec  # the fp16/bf16 copy of the model (parity's reference is the fp32 model)
        if big:
            _return_freed_memory()
        src = model.source  # type: ignore[attr-defined]
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": info,
            "model_fingerprint": fingerprint,
            # a family's other files (LlamaGen's VQ checkpoint) beside the checkpoint and config
            "source": {"checkpoint": src.checkpoint, "config": src.config, **getattr(src, "extra", {}),
                       **example_condition(src.checkpoint, example)},
            "precision": precision,
            **({"quantization": quantization} if quantization else {}),
            "opset": opset,
            "custom_domains": {"vqdeploy": 1},
            "max_batch": max_batch,
            "graphs": graphs,
            "kv_cache": KV_CACHE_DOC,
            "sampling": SAMPLING_DOC,
            "versions": versions(),
        }
        typed = Manifest.from_json(validate(manifest, "manifest.json"))  # what is written reads back
        if parity:
            manifest["parity"] = _export_parity(model, tmp, typed, precision, log)
        else:
            manifest["parity"] = {"backend": "onnxruntime-cpu", "skipped": True}
            log("parity check skipped (--no-parity)")
        manifest["export_seconds"] = round(time.perf_counter() - t0, 1)
        write_manifest(tmp, manifest)
        if parity and not manifest["parity"]["passed"]:
            report = out.parent / f"{out.name}.parity-failed.json"
            atomic_write(report, json.dumps(manifest["parity"], indent=2) + "\n")
            what = (f"the --quantize {quantization['scheme']} transformer is below the quality threshold or "
                    if quantization else "")
            raise ParityError(f"{what}exported graphs do not match PyTorch within tolerance (report: {report})")
        install(tmp, out, log=log)
    except OSError as e:  # a full disk, a read-only file system ... while the export is written: one line
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error(e, out, "write the export to") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {shown(out)}/ in {manifest['export_seconds']:.1f} s")
    return typed  # its ``raw`` is the manifest as written (parity and timing included)


def _export_parity(model: Any, directory: Path, manifest: Manifest, precision: str, log: Log) -> dict[str, Any]:
    candidate = OnnxRuntimeBackend(Artifacts(directory, manifest))
    log("parity: onnxruntime (CPU) vs PyTorch ..." + (f" ({candidate.emulation})" if candidate.emulation else ""))
    t = time.perf_counter()
    scheme = manifest.quantization.scheme if manifest.quantization else None
    reports = check_backend(TorchBackend(model, manifest), candidate, manifest.model, precision, quantization=scheme)
    for r in reports:
        log("  " + r.line())
    backend = "onnxruntime-cpu (bf16 emulated)" if candidate.emulation else "onnxruntime-cpu"
    return {"backend": backend, "reference": "torch-cpu-fp32", "seed": 0,
            "passed": all(r.passed for r in reports), "seconds": round(time.perf_counter() - t, 1),
            "stages": [r.to_dict() for r in reports]}
