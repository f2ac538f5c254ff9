"""``build-trt``: one engine per exported graph, into ``<artifacts>/engines/``, skipping every
engine whose cache key is unchanged.

An engine is rebuilt only when its cache key changes. The key hashes everything that decides
the engine's content: the graph bytes (sha256 from the manifest, plus external data), the
resolved optimization profiles, precision, workspace limit, the TensorRT flavour and version,
the target (compute capabilities; the GPU name for datacenter TensorRT) and ``RECIPE``, the
version of the way vqdeploy configures the builder. The timing cache and the log level are not
part of it: they change build time, not what the engine computes.

Writes stay inside the artifacts directory (README, Safety): ``engines/`` is a real directory
(``inside_dir``), engine files are ``<graph name>.engine`` written with ``atomic_write``, the
build lock is ``exclusive_lock`` and the log a file this run creates (``logs.LogFile``); all of
it is checked writable before TensorRT builds anything."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqdeploy.artifacts import Artifacts, Manifest, open_artifacts
from vqdeploy.artifacts import engines as record
from vqdeploy.artifacts.manifest_schema import ONNXRUNTIME_ONLY
from vqdeploy.artifacts.paths import artifact_file, check_name
from vqdeploy.bounds import PRECISIONS
from vqdeploy.errors import ArtifactError, ConfigError
from vqdeploy.files import atomic_write, check_target, check_writable, exclusive_lock, sha256_file
from vqdeploy.trt import builder as bd
from vqdeploy.trt import network as nw
from vqdeploy.trt import profiles as pf
from vqdeploy.trt import target
from vqdeploy.trt.logs import LOG, PREVIOUS_LOG, BuildLog, Echo, LogFile
from vqdeploy.trt.shim import TensorRT, load, trt

RECIPE = 2  # bump when the builder configuration changes in a way that changes engines (2: TF32 cleared)


def cache_key(inputs: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``inputs`` (graph hash, options, TensorRT, target)."""
    blob = json.dumps({"recipe": RECIPE, **inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class BuildOptions:
    precision: str | None = None  # None: the precision of the exported graphs
    batch: pf.Range | None = None
    size: pf.SizeRange | None = None
    target_cc: Sequence[str] = ()
    workspace: int | None = None  # bytes
    timing_cache: Path | None = None
    verbose: bool = False
    force: bool = False
    graphs: Sequence[str] = field(default_factory=tuple)  # empty: all


def check_precision(requested: str | None, manifest: Manifest, artifacts: Path) -> str:
    """The engine precision is the graphs' precision (strongly typed networks): ``--precision``
    only confirms it, and a different one is an error rather than a silent cast."""
    exported = str(manifest.precision)
    if requested is None or requested == exported:
        return exported
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision {requested}: expected one of {', '.join(PRECISIONS)}")
    how = f"export them in {requested}: vqdeploy export --precision {requested} --out <new dir>"
    raise ConfigError(f"--precision {requested}: the graphs in {artifacts} were exported in {exported}, and TensorRT "
                      f"builds them strongly typed (engine precision = graph precision); {how}")


def build_engines(artifacts: str | Path | Artifacts, options: BuildOptions = BuildOptions(),
                  echo: Echo = print) -> dict[str, Any]:
    """Build (or reuse) every engine; returns the engines.json content."""
    opened = open_artifacts(artifacts)
    artifacts, manifest = opened.path, opened.manifest
    precision = check_precision(options.precision, manifest, artifacts)
    graphs: Mapping[str, Any] = manifest.graphs
    unknown = [g for g in options.graphs if g not in graphs]
    if unknown:
        raise ConfigError(f"no graph '{unknown[0]}' in {artifacts} (graphs: {', '.join(graphs)})")
    only_ort = [g for g in options.graphs if g in ONNXRUNTIME_ONLY]
    if only_ort:
        raise ConfigError(f"graph '{only_ort[0]}' runs on ONNX Runtime only (TensorRT builds the 'transformer' graph)")
    names = list(options.graphs) or [g for g in graphs if g not in ONNXRUNTIME_ONLY]
    # resolve every profile before the (slow) builds, so that a bad --size fails at once
    resolved = {n: pf.resolve(graphs[n], n, options.batch, options.size) for n in names}
    api = load()
    tgt = target.resolve(api, options.target_cc)
    if options.workspace is not None and api.rtx and target.current_gpu() is None:
        # observed with TensorRT-RTX 1.7: a workspace limit makes the ahead-of-time build allocate it, and fail
        raise ConfigError("--workspace: TensorRT-RTX cannot apply a workspace limit without a GPU here; leave it out")
    out = opened.engines_dir(create=True)
    check_writable(out, "build-trt")
    for n in names:  # a symlink or a directory in an engine's place fails now, not after its build
        _engine_file(out, n)
    for file in (record.ENGINES_JSON, LOG, PREVIOUS_LOG):  # and everything else this build writes
        check_target(out / file, "build-trt", error=ArtifactError)
    if options.timing_cache is not None:
        check_target(options.timing_cache, "--timing-cache")
    opened.verify()
    echo(f"{api}, target {tgt}, precision {precision}: {len(names)} engine(s) into {out}/ (log: {out / LOG})")
    if options.timing_cache is not None and api.rtx:
        echo("note: --timing-cache is ignored: TensorRT-RTX does not time tactics")
    with exclusive_lock(out / ".build.lock", f"{out}: another build-trt is running on these artifacts", remove=True):
        log_file = LogFile(out)
        try:
            return _build_all(api, opened, names, resolved, tgt, precision, options,
                              BuildLog(log_file, "verbose" if options.verbose else "info"), echo)
        finally:
            log_file.close()


def _build_all(api: TensorRT, artifacts: Artifacts, names: list[str],
               resolved: dict[str, pf.Profiles], tgt: target.Target, precision: str, options: BuildOptions,
               log: BuildLog, echo: Echo) -> dict[str, Any]:
    out = artifacts.engines_path
    manifest = artifacts.manifest
    try:
        data = record.read(out)
    except ArtifactError as e:  # a damaged record only costs a rebuild: every engine is built again
        echo(f"note: {e}; rebuilding every engine")
        data = None
    if data is None or data.get("model_fingerprint") != manifest.fingerprint:
        data = record.empty(manifest.fingerprint)
    t_all = time.perf_counter()
    for i, name in enumerate(names, 1):
        entry = _build_one(api, artifacts, name, resolved[name], tgt, precision, options, data, log,
                           f"[{i}/{len(names)}] {name}", echo)
        data["engines"][name] = entry
        record.write(out, data)  # after every engine: a later failure keeps the finished ones
    echo(f"done in {time.perf_counter() - t_all:.1f} s: {out / record.ENGINES_JSON}")
    return data


def _engine_file(directory: Path, name: str) -> Path:
    """``<name>.engine`` in ``directory``: absent or a regular file (the name is a plain identifier)."""
    file = f"{check_name(name, f'manifest.json graphs.{name}')}.engine"
    return artifact_file(directory, file, f"the engine of {name}", must_exist=False)


def _build_one(api: TensorRT, artifacts: Artifacts, name: str, profiles: pf.Profiles,
               tgt: target.Target, precision: str, options: BuildOptions, data: dict[str, Any], log: BuildLog,
               label: str, echo: Echo) -> dict[str, Any]:
    graph = artifacts.manifest.graphs[name]
    out = artifacts.engines_path
    engine = _engine_file(out, name)
    file = engine.name
    key_inputs = {
        "graph": {"file": graph["file"], "sha256": graph["sha256"],
                  "external_data_sha256": (graph.get("external_data") or {}).get("sha256")},
        "tensorrt": {"flavour": api.flavour, "version": api.version},
        "target": tgt.to_json(),
        "precision": precision,
        "profiles": pf.to_json(profiles),
        "workspace": options.workspace,
    }
    key = cache_key(key_inputs)
    old = data["engines"].get(name)
    if (not options.force and old is not None and old["cache_key"] == key and engine.is_file()
            and sha256_file(engine) == old["sha256"]):
        echo(f"{label}: unchanged, kept {file}")
        # what the key covers is restated from this build, not trusted from the record (which the
        # key does not protect: a renamed profile tensor there would survive every cached build)
        return {**old, **key_inputs, "file": file, "cache_key": key, "bytes": engine.stat().st_size,
                "profile_order": list(profiles)}

    log.section(f"{name}: {graph['file']} -> {file}")
    t0 = time.perf_counter()
    builder = trt.Builder(log.logger)
    source = artifacts.graph_file(name)  # its hashes and external data checked before the parser follows it
    network, _parser = nw.parse(builder, log.logger, source)  # the parser owns the weights: keep it
    inputs, outputs = nw.io(network)
    nw.check_io(name, inputs, outputs, graph)
    config = bd.configure(api, builder, profiles, tgt, options.workspace)
    timing = options.timing_cache if not api.rtx else None
    if timing is not None:
        bd.load_timing_cache(config, timing, echo)
    echo(f"{label}: building ({', '.join(profiles)}) ...")
    plan = bd.build(api, builder, network, config, log, label, echo)
    atomic_write(engine, plan)
    bd.save_timing_cache(config, timing)
    seconds = time.perf_counter() - t0
    echo(f"{label}: built {file} ({plan.nbytes / 1e6:.1f} MB) in {seconds:.1f} s"
         + (f", {log.warnings} warning(s) in build.log" if log.warnings else ""))
    return {
        "file": file,
        "sha256": hashlib.sha256(plan).hexdigest(),
        "bytes": plan.nbytes,
        "cache_key": key,
        **key_inputs,
        "profile_order": list(profiles),  # optimization profile index i = profile_order[i]
        "inputs": inputs,
        "outputs": outputs,
        "build_seconds": round(seconds, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
