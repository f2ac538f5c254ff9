"""``vqdeploy bench``: per-stage latency and tokens/s for every available backend, next to the
upstream-style reference sampler (full recomputation per token) and PyTorch eager with a KV
cache, measured in one run on the same inputs, printed as a table and written as JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vqdeploy import machine
from vqdeploy.artifacts import Artifacts, Manifest, ModelInfo, open_artifacts
from vqdeploy.artifacts.manifest_schema import VALID_LENGTH
from vqdeploy.artifacts.outputs import check_files, check_output_dir, make_output_dir
from vqdeploy.conditions import ConditionInput
from vqdeploy.errors import ArtifactError, CheckpointError, InputError, os_error, shown
from vqdeploy.files import atomic_write
from vqdeploy.limits import check_int, check_num_samples
from vqdeploy.parity.inputs import sample_condition
from vqdeploy.runtime.backends.base import Backend, Decoding
from vqdeploy.runtime.backends.registry import OpenOptions, open_backend, parse_backends, spec
from vqdeploy.runtime.generation import Generator, Request, Rows, check_decoding
from vqdeploy.runtime.guidance import GUIDED_SAMPLER
from vqdeploy.runtime.jacobi import DEFAULT_WINDOW
from vqdeploy.runtime.sampling import SamplingParams

PARAMS = SamplingParams(temperature=1.0, top_k=100)
REFERENCE_POINTS = 8  # sequence lengths timed for the reference sampler when it is too slow to run whole
MAX_REPEATS = 1000
REFERENCE = "upstream sampler, torch-cpu fp32 (no cache)"
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}  # per transformer weight
UNSTEADY = 1.5  # a row whose token time moved more than this (max / min over the timed runs) gets a note


def passive_openmp() -> tuple[str | None, str | None]:
    """Make PyTorch's OpenMP threads sleep, not spin, while they wait (``OMP_WAIT_POLICY=PASSIVE``, read when
    torch loads libgomp: so before torch is imported; a policy the user set is kept).

    Measured on the demo, 2 cores with other jobs running (``tools/bench_spread.py``, docs/performance.md):
    with libgomp's default spinning, torch's per-token time ranged 29-114 ms over four identical bench runs
    and 16-77 ms within one process, because every op's parallel region waits for a thread that spins on a
    core another process needs; with passive waiting it is 3.8-4.3 ms. ONNX Runtime has its own thread
    pool and is unaffected. Returns the policy in force (None: torch was imported before, with its own) and a
    note for the caller to print once it knows torch rows will run (the note is noise before an error)."""
    if "torch" in sys.modules:
        policy = os.environ.get("OMP_WAIT_POLICY")
        if (policy or "").upper() != "PASSIVE":
            return policy, ("note: torch was imported before bench could set OMP_WAIT_POLICY=PASSIVE: its rows "
                            "may swing between runs on a busy machine (set it in the environment)")
        return policy, None
    return os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE"), None


def memory_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Host memory bandwidth in bytes/s from a large copy (read + write)."""
    a = np.ones(nbytes // 4, dtype=np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(repeats))
    return 2 * nbytes / best


def device_bandwidth(device: str, nbytes: int = 1 << 30, repeats: int = 5) -> float | None:
    """A GPU's memory bandwidth in bytes/s from a device-to-device copy (read + write), measured through torch;
    None for the CPU, or where torch or its CUDA is missing (those rows' floor then shows "-"). A GPU token is
    usually launch-bound, and this floor says by how much (the first GPU run: 0.79 ms against 0.025 ms)."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    where = torch.device(device)
    a = torch.ones(nbytes // 4, dtype=torch.float32, device=where)
    b = torch.empty_like(a)
    seconds = []
    for _ in range(repeats + 1):  # the first: a warm-up
        t = time.perf_counter()
        b.copy_(a)
        torch.cuda.synchronize(where)
        seconds.append(time.perf_counter() - t)
    del a, b
    torch.cuda.empty_cache()
    return 2 * nbytes / min(seconds[1:])


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class TimedDecoding:
    """Wraps a decoding and records the prefill (synchronized) and the time from each step to the next
    one's start, which covers the draw (host or sampler graph) and the step: per-token cost as the loop
    pays it. Steps are not synchronized one by one, so a GPU keeps its queue; the last draw waits in
    ``tokens()``."""

    def __init__(self, inner: Decoding, synchronize: Callable[[], None]) -> None:
        self.inner, self.synchronize = inner, synchronize
        self.prefill_s = 0.0
        self.marks: list[float] = []

    def prefill(self, prompt: np.ndarray) -> None:
        t = time.perf_counter()
        self.inner.prefill(prompt)
        self.synchronize()
        self.prefill_s = time.perf_counter() - t
        self.marks = [time.perf_counter()]

    def draw(self) -> None:
        self.inner.draw()

    def extend(self) -> None:
        self.inner.extend()
        self.marks.append(time.perf_counter())

    def tokens(self) -> np.ndarray:
        out = self.inner.tokens()
        self.marks.append(time.perf_counter())
        return out

    @property
    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def bench_backend(be: Backend, condition: ConditionInput, info: ModelInfo, n: int, repeats: int,
                  sampler: str = "host", params: SamplingParams = PARAMS) -> dict[str, Any]:
    """Median over ``repeats`` of each stage, on the one generation path (the device synchronized at each
    stage boundary); ``step`` is the mean cost of one token after the prefill (the draw and one cached step),
    tokens/s counts the whole token loop."""
    steps = info.image_tokens
    generator = Generator(be, be.manifest, sampler)
    rows = [Rows(Request(condition, n, params, 0), 0, n)]
    runs: dict[str, list[float]] = {k: [] for k in ("cond_encoder", "prefill", "step", "sampling", "decoder", "total")}
    per_step: list[list[float]] = []
    for _ in range(repeats + 1):  # the first run warms up (session init, allocator, caches)
        timed: list[TimedDecoding] = []

        def wrap(d: Decoding) -> Decoding:
            timed.append(TimedDecoding(d, be.synchronize))
            return timed[-1]

        t0 = time.perf_counter()
        out = generator.run(rows, wrap=wrap, synchronize=True)
        total = time.perf_counter() - t0
        step = statistics.mean(timed[0].step_times) if steps > 1 else 0.0
        for key, v in zip(runs, (out.timings["cond_encoder"], timed[0].prefill_s, step, out.timings["sampling"],
                                 out.timings["decoder"], total)):
            runs[key].append(v)
        per_step.append(timed[0].step_times)
    res: dict[str, Any] = {k: statistics.median(v[1:]) for k, v in runs.items()}
    res["runs"] = {k: v[1:] for k, v in runs.items()}  # every timed run (the warm-up left out): the spread
    res["tokens_per_s"] = n * steps / res["sampling"]
    res["sampler"] = sampler
    if steps > 1:  # per-token time where in the sequence it is drawn (flat with the in-place cache)
        tc = info.cond_tokens
        at = sorted({0, (steps - 1) // 4, (steps - 1) // 2, steps - 2})
        res["step_ms_at_position"] = {str(tc + k): 1e3 * statistics.median(t[k] for t in per_step[1:]) for k in at}
    return res


def bench_jacobi(be: Backend, condition: ConditionInput, info: ModelInfo, n: int, repeats: int,
                 window: int, params: SamplingParams = PARAMS) -> dict[str, Any]:
    """Speculative Jacobi decoding on the one generation path: medians of each stage, tokens per transformer call.
    ``step`` is the sampling time per token of a row (rows run one after another); there is no separate prefill."""
    steps = info.image_tokens
    generator = Generator(be, be.manifest, "host", "jacobi", window)
    rows = [Rows(Request(condition, n, params, 0), 0, n)]
    runs: dict[str, list[float]] = {k: [] for k in ("cond_encoder", "sampling", "decoder", "total")}
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        out = generator.run(rows, synchronize=True)
        total = time.perf_counter() - t0
        for key, v in zip(runs, (out.timings["cond_encoder"], out.timings["sampling"], out.timings["decoder"], total)):
            runs[key].append(v)
    res: dict[str, Any] = {k: statistics.median(v[1:]) for k, v in runs.items()}
    res["runs"] = {k: v[1:] for k, v in runs.items()}
    res["runs"]["step"] = [s / (n * steps) for s in res["runs"]["sampling"]]  # per token, as the table's spread reads
    res.update(prefill=float("nan"), step=res["sampling"] / (n * steps), tokens_per_s=n * steps / res["sampling"],
               sampler="host", decoding="jacobi", jacobi_window=window,
               jacobi_tokens_per_call=generator.jacobi_stats.tokens_per_call)
    return res


def reference_model(manifest: Manifest, ckpt: str | None, wanted: bool, log: Callable[[str], None]) -> Any:
    """The PyTorch model for the torch and upstream rows, or None with a note: a deployment is benchmarked
    with its artifacts alone. ``wanted``: the torch backend was asked for by name (then it must load)."""
    if not machine.torch_installed():
        if wanted:
            raise InputError("bench --backends torch needs PyTorch: pip install torch")
        log("bench: PyTorch is not installed: the torch-cpu and upstream rows are left out (pip install torch)")
        return None
    from vqdeploy.families import load_reference  # imports torch

    try:
        return load_reference(manifest, ckpt)
    except (CheckpointError, ArtifactError) as e:
        if wanted or ckpt is not None:
            raise
        log(f"bench: no PyTorch reference ({e}); the torch-cpu and upstream rows are left out (pass --ckpt to add them)")
        return None


def torch_threads() -> int | None:
    if not machine.torch_installed():
        return None
    import torch

    return int(torch.get_num_threads())


def bench_reference(manifest: Manifest, model: Any, cond: np.ndarray, steps: int, full: bool,
                    params: SamplingParams = PARAMS) -> dict[str, Any]:
    """The codebase's own sampler cost (taming: one full forward over the whole sequence per token).

    ``full`` runs the family's upstream sampler itself. Otherwise the forward time is measured at
    ``REFERENCE_POINTS`` sequence lengths and summed over all steps by linear interpolation
    (the cost of a full forward grows smoothly with length); the method is reported.
    """
    import torch

    from vqdeploy.families import family_named

    family = family_named(manifest.model.family)
    _, tr = manifest.model.sampling()
    c = torch.from_numpy(cond)
    with torch.no_grad():
        sample = family.upstream_sampler(model)
        if full and sample is not None:
            k = min(params.top_k or 100, tr.vocab_size)
            guidance = {"cfg_scale": params.cfg_scale} if params.guided else {}
            t = _timed(lambda: sample(c, steps, k, **guidance))
            return {"total": t, "tokens_per_s": c.shape[0] * steps / t,
                    "method": f"full run of {family.title}'s own sampling loop"}
        lengths = np.unique(np.linspace(c.shape[1], c.shape[1] + steps - 1, REFERENCE_POINTS).astype(int))
        times = []
        for length in lengths:
            seq = torch.cat([c, torch.zeros((c.shape[0], length - c.shape[1]), dtype=torch.long)], dim=1)
            family.teacher_forced_logits(model, seq)  # warm-up at this shape
            times.append(min(_timed(lambda s=seq: family.teacher_forced_logits(model, s)) for _ in range(2)))
    total = float(np.interp(np.arange(c.shape[1], c.shape[1] + steps), lengths, times).sum())
    return {"total": total, "tokens_per_s": c.shape[0] * steps / total,
            "method": f"forward timed at {len(lengths)} sequence lengths, interpolated over {steps} steps"}


def variant(manifest: Manifest) -> str:
    """fp32 / fp16 / bf16, or the weight quantization (int8, int4; int4/fp16 with fp16 activations)."""
    q = manifest.quantization
    if q is None:
        return manifest.precision
    return q.scheme + ("" if manifest.precision == "fp32" else f"/{manifest.precision}")


def variant_names(exports: list[Artifacts]) -> list[str]:
    """Each export's row name: its variant, then, where two exports share it (``--compare`` of int4 exports with
    other ``--quantize-block``), its quantization block, then its directory."""
    names = [variant(a.manifest) for a in exports]
    q = [a.manifest.quantization for a in exports]
    names = [f"{n} block {qi.block_size}" if qi is not None and names.count(n) > 1 else n for n, qi in zip(names, q)]
    return [f"{n} ({a.path.name})" if names.count(n) > 1 else n for n, a in zip(names, exports)]


def transformer_weight_bytes(manifest: Manifest) -> int:
    """What one token step reads at least: the transformer's weights as exported."""
    q = manifest.quantization
    if q is not None:
        return q.weight_bytes
    _, tr = manifest.model.sampling()
    return tr.parameters * BYTES[manifest.precision]


def compared_artifacts(artifacts: Path, compare: list[Path], fingerprint: str) -> list[Artifacts]:
    """``bench --compare DIR``: other exports of the same model (another precision or quantization),
    benchmarked in the same run, next to the main artifacts."""
    out = []
    for d in compare:
        other = open_artifacts(d)
        if other.manifest.fingerprint != fingerprint:
            raise InputError(f"--compare {d}: the artifacts of another model than {artifacts}")
        out.append(other)
    return out


def run_bench(artifacts: Path | Artifacts, backends: str, device: str | None, n: int, repeats: int, reference: bool,
              out: Path, ckpt: str | None, log: Callable[[str], None] = print, cuda_graphs: bool = False,
              compare: list[Path] | None = None, decoding: str = "sequential",
              jacobi_window: int = DEFAULT_WINDOW, params: SamplingParams = PARAMS,
              full_attention: bool = False) -> dict[str, Any]:
    """``full_attention``: ONNX Runtime CPU rows are also timed on the portable transformer graph (attention over
    the whole capacity), next to its valid-length twin."""
    check_num_samples(n)
    check_int(repeats, "--repeats", 1, MAX_REPEATS)
    omp_wait_policy, omp_note = passive_openmp()  # before anything imports torch
    opened = open_artifacts(artifacts)
    artifacts, manifest = opened.path, opened.manifest
    others = compared_artifacts(artifacts, compare or [], manifest.fingerprint)
    info = manifest.model
    if not info.samples:
        raise InputError("bench needs a Net2NetTransformer (there is no sampling in a VQGAN)")
    info.sampling()[0].check_guidance(params.guided, "--cfg-scale")
    check_decoding(decoding, params, "--cfg-scale")
    to_stdout = str(out) == "-"
    if not to_stdout:
        check_output_dir(artifacts, out.parent, "bench --out")
        check_files([out], "bench --out", " (--out - writes the JSON to stdout)")
    candidates = parse_backends(backends, opened, device)  # every requested backend can run, before any does
    other_candidates = [[c for c in parse_backends(backends, o, device) if not spec(c[0]).reference] for o in others]
    named_torch = backends != "auto" and any(spec(b).reference for b, _ in candidates)
    want_torch_cpu = backends == "auto" or ("torch", "cpu") in candidates
    if omp_note and (want_torch_cpu or reference or named_torch):
        log(omp_note)
    model = reference_model(manifest, ckpt, named_torch, log) if (want_torch_cpu or reference or named_torch) else None
    condition = sample_condition(info, 0)
    rows: dict[str, dict[str, Any]] = {}
    runs: list[tuple[str, str, bool, Backend | None]] = []
    torch_cpu: Backend | None = None
    if model is not None:
        from vqdeploy.runtime.backends.torch_backend import TorchBackend  # imports torch

        torch_cpu = TorchBackend(model, manifest, "cpu")
        if want_torch_cpu:
            runs.append(("torch", "cpu", False, torch_cpu))
    if cuda_graphs and not any(d.startswith("cuda") for _, d in candidates):
        log("bench: --cuda-graphs: no backend runs on a GPU here; there is nothing to time with CUDA graphs")
    for b, d in candidates:
        if (b, d) != ("torch", "cpu"):
            runs += [(b, d, False, None)] + ([(b, d, True, None)] if cuda_graphs and d.startswith("cuda") else [])
    cond_info, tr = info.sampling()
    fp32_bytes = tr.parameters * 4
    jobs = [(name, dev, graphs, be, opened) for name, dev, graphs, be in runs]
    jobs += [(name, dev, False, None, o) for o, cands in zip(others, other_candidates) for name, dev in cands]
    bw = memory_bandwidth()
    device_bw = {dev: device_bandwidth(dev) for dev in dict.fromkeys(job[1] for job in jobs) if dev != "cpu"}
    row_names = dict(zip(map(id, [opened, *others]), variant_names([opened, *others])))
    for name, dev, graphs, be, where in jobs:  # --compare: the same model's other exports, in the same run
        be = be or open_backend(name, where, dev, OpenOptions(cuda_graphs=graphs, model=model if name == "torch"
                                                               else None, ckpt=ckpt))
        m = where.manifest
        reference_row = spec(name).reference
        precision = "fp32" if reference_row else variant(m)  # torch runs the checkpoint's fp32
        shown_as = "fp32" if reference_row else row_names[id(where)]
        rate = bw if dev == "cpu" else device_bw[dev]  # the time this row's weights take to stream once
        floor_ms = 1e3 * (fp32_bytes if reference_row else transformer_weight_bytes(m)) / rate if rate else None
        graph_ok = be.has_graph("sampler") and (not params.guided or be.has_graph(GUIDED_SAMPLER))
        for sampler in ("host", "graph") if graph_ok else ("host",):
            label = f"{spec(name).label(dev)} {shown_as}" + (" KV cache" if reference_row else "") + \
                (", sampler graph" if sampler == "graph" else "") + (", CUDA graphs" if graphs else "")
            log(f"bench: {label}" + (f" ({where.path})" if where is not opened else "") + " ...")
            rows[label] = {"backend": name, "device": dev, "precision": precision, "cuda_graphs": graphs,
                           "floor_ms": floor_ms,
                           **bench_backend(be, condition, info, n, repeats, sampler, params)}
            if full_attention and sampler == "host" and getattr(be, "valid_length", False) \
                    and be.has_graph(VALID_LENGTH) and dev == "cpu":
                full = f"{label}, full-capacity attention"
                log(f"bench: {full} ...")
                be.valid_length = False  # type: ignore[attr-defined]
                rows[full] = {**rows[label], **bench_backend(be, condition, info, n, repeats, sampler, params)}
                be.valid_length = True  # type: ignore[attr-defined]
        if decoding == "jacobi" and not graphs:  # host sampler only
            label = f"{spec(name).label(dev)} {shown_as}" + (" KV cache" if reference_row else "") + \
                f", Jacobi (window {jacobi_window})"
            log(f"bench: {label} ...")
            rows[label] = {"backend": name, "device": dev, "precision": precision, "cuda_graphs": False,
                           "floor_ms": floor_ms,
                           **bench_jacobi(be, condition, info, n, repeats, jacobi_window, params)}
    steps = info.image_tokens
    reference_label = REFERENCE
    if reference and model is not None and torch_cpu is not None:
        from vqdeploy.families import family_named

        reference_label = family_named(manifest.model.family).upstream_label
        log(f"bench: {reference_label} ...")
        cond = cond_info.condition_tokens(torch_cpu, condition, n).reshape(n, -1)
        rows[reference_label] = {"backend": "torch", "device": "cpu", "precision": "fp32", "reference": True,
                                 **bench_reference(manifest, model, cond, steps, steps * cond.shape[1] <= 64 * 128,
                                                   params)}
    weight_bytes = transformer_weight_bytes(manifest)
    result = {
        "artifacts": str(artifacts), "precision": manifest.precision, "num_samples": n, "repeats": repeats,
        "sampling": {"temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
                     "cfg_scale": params.cfg_scale},
        "reference_row": reference_label,
        "image_tokens": steps, "cond_tokens": info.cond_tokens,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch_threads": torch_threads(),
                    "omp_wait_policy": omp_wait_policy, "load_average": _load_average()},
        "host_memory_bandwidth_GBps": bw / 1e9,
        "device_memory_bandwidth_GBps": {d: r / 1e9 for d, r in device_bw.items() if r},
        "transformer_weight_bytes": weight_bytes,
        "step_floor_ms_cpu": 1e3 * weight_bytes / bw,
        "backends": rows,
    }
    _print_table(result, log)
    text = json.dumps(result, indent=2) + "\n"
    if to_stdout:
        write_stdout(text.encode())
        return result
    out = make_output_dir(artifacts, out.parent) / out.name
    atomic_write(out, text)
    log(f"wrote {shown(out)}")
    return result


def write_stdout(data: bytes) -> None:
    """``--out -``: the JSON results on stdout (the table and progress go to stderr)."""
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise InputError("bench --out -: stdout was closed before the results were written") from None
    except OSError as e:
        raise os_error(e, "stdout", "write") from None


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not on every platform
        return None


def token_spread(row: dict[str, Any]) -> tuple[float, float]:
    """(min, max) ms of one token over a row's timed runs."""
    steps = row["runs"]["step"]
    return 1e3 * min(steps), 1e3 * max(steps)


def _print_table(result: dict[str, Any], log: Callable[[str], None]) -> None:
    """Every ratio compares tokens/s of whole token loops at the same batch: "x upstream" against upstream's
    sampler (PyTorch fp32 on CPU, no cache: what a taming user runs today), "x torch" against PyTorch eager
    fp32 with our KV cache on the same device (where it ran), and per token against the time this
    precision's transformer weights take to stream once at the measured bandwidth of the row's device (the host's;
    a GPU's through torch, where it is there)."""
    rows = result["backends"]
    ref = rows.get(result.get("reference_row", REFERENCE))
    torch_on = {r["device"]: r for r in rows.values() if r["backend"] == "torch" and "step" in r and not r["cuda_graphs"]}
    log("")
    log(f"{'backend':<44}{'cond ms':>9}{'prefill ms':>11}{'token ms':>9}{'(min-max)':>14}{'decode ms':>10}"
        f"{'tokens/s':>10}{'x upstream':>11}{'x torch':>8}{'token/floor':>12}")
    for label, r in rows.items():
        if "step" not in r:
            log(f"{label:<44}{'':>9}{'':>11}{'':>9}{'':>14}{'':>10}{r['tokens_per_s']:>10.1f}{'1.0x':>11}{'':>8}"
                f"{'':>12}  ({r['method']})")
            continue
        vs_ref = f"{r['tokens_per_s'] / ref['tokens_per_s']:.1f}x" if ref else "-"
        base = torch_on.get(r["device"])
        vs_torch = f"{r['tokens_per_s'] / base['tokens_per_s']:.1f}x" if base else "-"
        floor = f"{r['step'] * 1e3 / r['floor_ms']:.2f}x" if r.get("floor_ms") else "-"  # the row's device's
        lo, hi = token_spread(r)
        spread = f"({lo:.2f}-{hi:.2f})"
        log(f"{label:<44}{r['cond_encoder'] * 1e3:>9.1f}{r['prefill'] * 1e3:>11.1f}{r['step'] * 1e3:>9.2f}"
            f"{spread:>14}{r['decoder'] * 1e3:>10.1f}{r['tokens_per_s']:>10.1f}{vs_ref:>11}{vs_torch:>8}{floor:>12}")
    guided = result.get("sampling", {}).get("cfg_scale", 1.0) > 1.0
    log(f"batch {result['num_samples']}" + (" with classifier-free guidance (two transformer rows per sample; tokens/s "
                                            "counts the samples' tokens)" if guided else "")
        + f", medians of {result['repeats']} runs after a warm-up (min-max: token ms over those runs). token ms: one "
        f"token after the prefill (draw + cached step). x upstream: tokens/s over upstream's sampler ("
        + (f"the '{result.get('reference_row', REFERENCE)}' row: " if ref else "")  # named where it ran
        + "the codebase's own, PyTorch fp32, CPU). x torch: over PyTorch eager fp32 with a KV cache on the same device"
        + (f" (the artifacts are {result['precision']}: precisions differ)" if result["precision"] != "fp32" else "")
        + ". token/floor: token ms over the time that row's transformer weights take to stream once.")
    log(f"host memory bandwidth {result['host_memory_bandwidth_GBps']:.1f} GB/s; transformer weights "
        f"{result['transformer_weight_bytes'] / 1e6:.0f} MB ({result['precision']}) -> CPU floor "
        f"{result['step_floor_ms_cpu']:.2f} ms per token")
    for dev, gbps in result.get("device_memory_bandwidth_GBps", {}).items():
        log(f"{dev} memory bandwidth {gbps:.0f} GB/s (a device-to-device copy) -> floor "
            f"{result['transformer_weight_bytes'] / gbps / 1e6:.3f} ms per token")
    load = result["machine"].get("load_average")
    for label, r in rows.items():
        if "runs" in r and len(r["runs"]["step"]) > 1:
            lo, hi = token_spread(r)
            if hi > UNSTEADY * lo:
                log(f"note: {label}: one token took {lo:.2f}-{hi:.2f} ms over the {len(r['runs']['step'])} runs "
                    f"({hi / lo:.1f}x)" + (f" with a load average of {load:g}" if load is not None else "")
                    + ": the machine is busy; compare rows of one run, or raise --repeats")
    for label, r in rows.items():
        if "jacobi_tokens_per_call" in r:
            log(f"  {label}: {r['jacobi_tokens_per_call']:.2f} tokens per transformer call (rows one at a time)")
        if "step_ms_at_position" in r:
            at = ", ".join(f"{p}: {ms:.2f}" for p, ms in r["step_ms_at_position"].items())
            log(f"  {label}: token ms at sequence position {at}")
