"""``vqdeploy parity``: every available backend against the PyTorch reference, per stage, with
the sampled images side by side in an HTML page.

The report directory is prepared and checked before the comparisons (``outputs``), and the
report (json, html, images) is written at the end, every file atomically."""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vqdeploy.artifacts import Artifacts, ModelInfo, open_artifacts
from vqdeploy.artifacts.outputs import check_files, check_output_dir, make_output_dir
from vqdeploy.conditions import ConditionInput, Reading
from vqdeploy.errors import InputError, ParityError, shown
from vqdeploy.families import load_reference
from vqdeploy.files import atomic_write_many
from vqdeploy.images import png_bytes, to_uint8
from vqdeploy.limits import condition_budget
from vqdeploy.parity.checks import check_backend
from vqdeploy.parity.inputs import sample_condition
from vqdeploy.parity.quantized import quantized_scheme
from vqdeploy.runtime.backends.base import Backend
from vqdeploy.runtime.backends.registry import OpenOptions, open_backend, parse_backends, skipped_backends, spec
from vqdeploy.runtime.backends.torch_backend import TorchBackend
from vqdeploy.runtime.generation import Request
from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.runtime.sampling import SamplingParams

SAMPLES = 2


def parity_condition(info: ModelInfo, example: str | Path | None, seed: int, given: bool,
                     log: Callable[[str], None]) -> tuple[ConditionInput | None, str]:
    """The condition ``parity`` samples its images from, and where it came from: ``example`` (``--input``, or the
    manifest's ``source.example``) read as ``run`` reads INPUT, else a seeded random one (``sample_condition``).
    An example recorded at export that is not there any more is a note; a missing ``--input`` an error."""
    if not info.samples:
        return None, "none"
    if example is not None:
        if given or Path(example).is_file():
            cond, _ = info.sampling()
            value = cond.read(Path(example), Reading(None, condition_budget(info, None), log, "cli"))
            return value, str(example)
        log(f"parity: the example condition recorded at export ({example}) is not here; sampling a seeded random "
            "condition (pass --input FILE)")
    return sample_condition(info, seed), "random"


def run_parity(artifacts: Path | Artifacts, backends: str, device: str | None, seed: int, out: Path,
               ckpt: str | None, log: Callable[[str], None] = print, input: str | Path | None = None) -> dict[str, Any]:
    """``input``: the condition of the sampled images (default: the artifacts' example, ``source.example``)."""
    opened = open_artifacts(artifacts)
    artifacts, manifest = opened.path, opened.manifest
    info = manifest.model
    cond = info.condition
    candidates = parse_backends(backends, opened, device)
    if not candidates:
        raise ParityError("no backend to compare on this machine")
    if str(out) == "-":
        raise InputError("parity --out -: parity writes a report directory (report.json, report.html, images); "
                         "name a directory")
    check_output_dir(artifacts, out, "parity --out")
    labels = ["torch-cpu"] + [spec(n).label(d) for n, d in candidates]
    check_files([out / "report.json", out / "report.html", out / "condition.png",
                 *(out / f"{label}-{i}.png" for label in labels for i in range(SAMPLES))], "parity --out")
    condition, condition_source = parity_condition(info, input if input is not None else manifest.example, seed,
                                                   input is not None, log)
    reference = TorchBackend(load_reference(manifest, ckpt), manifest, "cpu")
    files: dict[str, bytes | str] = {}  # written together at the end
    params = SamplingParams(temperature=1.0, top_k=100)
    request = None if condition is None else Request(condition, SAMPLES, params, seed)
    rows: list[dict[str, Any]] = []
    ref_tokens = None
    runs: list[tuple[str, str, Backend | None]] = [("torch", "cpu", reference)]
    runs += [(n, d, None) for n, d in candidates]
    for name, dev, be in runs:
        label = spec(name).label(dev)
        be = be or open_backend(name, opened, dev, OpenOptions(model=reference.model if name == "torch" else None))
        row: dict[str, Any] = {"backend": label}
        note = be.emulation
        if note:
            row["note"] = note
        if be is not reference:
            log(f"parity: {label} vs torch-cpu ..." + (f" ({row['note']})" if "note" in row else ""))
            reports = check_backend(reference, be, info, manifest.precision, seed,
                                    quantization=quantized_scheme(manifest, name))
            for r in reports:
                log("  " + r.line())
            row["stages"] = [r.to_dict() for r in reports]
            row["passed"] = all(r.passed for r in reports)
        if request is not None:
            result = Pipeline(be, manifest).sample(request)
            tokens = result.tokens.reshape(SAMPLES, -1)
            if ref_tokens is None:
                ref_tokens = tokens
            else:
                diff = np.nonzero((tokens != ref_tokens).any(axis=0))[0]
                row["sampled_first_diverging_token"] = int(diff[0]) if diff.size else None
            row["images"] = []
            for i, im in enumerate(to_uint8(result.images)):
                files[f"{label}-{i}.png"] = png_bytes(im)
                row["images"].append(f"{label}-{i}.png")
        rows.append(row)
    picture = None if cond is None or condition is None else cond.picture(condition)
    if picture is not None:
        files["condition.png"] = png_bytes(picture)
    report = {"artifacts": str(artifacts), "precision": manifest.precision, "seed": seed,
              "created": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": _machine(),
              "versions": {"exported_with": manifest.raw.get("versions", {}), "running": _versions()},
              "condition": "condition.png" if picture is not None else (cond.text() if cond else "none"),
              "condition_kind": cond.kind if cond else None, "condition_source": condition_source,
              "condition_width": cond.picture_width if cond else 0,
              "sampling": {"temperature": params.temperature, "top_k": params.top_k},
              "skipped": skipped_backends(opened, device) if backends == "auto" else [],
              "passed": all(r.get("passed", True) for r in rows), "backends": rows}
    files["report.html"] = _html(report)
    files["report.json"] = json.dumps(report, indent=2) + "\n"
    out = make_output_dir(artifacts, out)
    atomic_write_many({out / name: data for name, data in files.items()})
    log(f"wrote {shown(out / 'report.json')} and {shown(out / 'report.html')}")
    if not report["passed"]:
        raise ParityError(f"a backend is outside tolerance (see {out / 'report.html'})")
    return report


def _machine() -> dict[str, Any]:
    import platform

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def _versions() -> dict[str, str]:
    """The runtimes on this machine (the manifest holds the ones the graphs were exported with)."""
    from importlib import metadata

    out = {}
    for dist in ("vqdeploy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "tensorrt-rtx-cu13-bindings",
                 "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _source_text(source: str | None) -> str:
    if source in (None, "none"):
        return "none"
    if source == "random":
        return "a seeded random condition: parity --input FILE, or export --example FILE, samples a real one"
    return html.escape(Path(source).name)


def _html(report: dict[str, Any]) -> str:
    def cell(v: Any) -> str:
        return html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))

    parts = ["<!doctype html><meta charset=utf-8><title>vqdeploy parity</title>",
             ("<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px}"
             "img{image-rendering:pixelated;width:192px}.FAIL{color:#fff;background:#b00;font-weight:bold}"
              ".ok{color:#060;background:#dfd;font-weight:bold}</style>"),
             f"<h1>vqdeploy parity ({cell(report['precision'])}, seed {report['seed']})</h1>",
             f"<p class={'ok' if report['passed'] else 'FAIL'} style='font-size:1.3em'>Overall: "
             f"<b>{'&#10004; passed' if report['passed'] else '&#10008; FAILED'}</b>. Reference: torch-cpu (fp32).</p>",
             f"<p>{cell(report['created'])} on {cell(report['machine']['platform'])} "
             f"({cell(report['machine']['processor'])}, {cell(report['machine']['cpus'])} CPUs). Running: "
             + cell(", ".join(f"{k} {v}" for k, v in report["versions"]["running"].items()))
             + ". Exported with: "
             + cell(", ".join(f"{k} {v}" for k, v in report["versions"]["exported_with"].items())) + ".</p>",
             (f"<p>Condition ({_source_text(report.get('condition_source'))}): <img src='condition.png' style='width:"
              f"{int(report.get('condition_width') or 96)}px;image-rendering:auto'></p>"
              if report["condition"] == "condition.png"
              else f"<p>Condition: {cell(report['condition'])}</p>"),
             ("<h2>Samples (same seed, top-k 100)</h2><table><tr><th>backend</th><th>first diverging token</th>"
             "<th>samples</th></tr>")]
    for row in report["backends"]:
        imgs = "".join(f"<img src='{html.escape(p)}'>" for p in row.get("images", []))
        div = row.get("sampled_first_diverging_token", "reference")
        name = cell(row["backend"]) + (f"<br><small>{cell(row['note'])}</small>" if "note" in row else "")
        parts.append(f"<tr><td>{name}</td><td>{cell('none' if div is None else div)}</td><td>{imgs}</td></tr>")
    parts.append("</table><h2>Stages</h2><table><tr><th>backend</th><th>stage</th><th>result</th><th>metrics</th>"
                 "<th>tolerance</th></tr>")
    for row in report["backends"]:
        for s in row.get("stages", []):
            status = "ok" if s["passed"] else "FAIL"
            label = "&#10004; ok" if s["passed"] else "&#10008; FAIL"
            metrics = ", ".join(f"{k}={cell(v)}" for k, v in s["metrics"].items())
            parts.append(f"<tr><td>{cell(row['backend'])}</td><td>{cell(s['stage'])}</td><td class={status}>{label}</td>"
                         f"<td>{metrics}</td><td>{cell(s['tolerance'])}</td></tr>")
    parts.append("</table>")
    if report["skipped"]:
        parts.append("<h2>Not compared here</h2><ul>"
                     + "".join(f"<li>{cell(s)}</li>" for s in report["skipped"]) + "</ul>")
    return "\n".join(parts)
