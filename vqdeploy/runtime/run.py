"""``vqdeploy run`` as a library call: one condition in, N images out, a summary back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vqdeploy.errors import InputError
from vqdeploy.export.manifest import read_manifest
from vqdeploy.files import check_writable
from vqdeploy.limits import check_seed, pixel_budget
from vqdeploy.runtime.backends.select import open_backend
from vqdeploy.runtime.images import grid_image, load_condition, output_paths, parse_size, to_uint8, write_pngs
from vqdeploy.runtime.pipeline import Pipeline, check_request
from vqdeploy.runtime.progress import TokenProgress
from vqdeploy.runtime.sampling import SamplingParams


def read_condition(input: Path | None, cond_info: dict[str, Any], size: tuple[int, int] | None,
                   budget: int | None = None, log: Callable[[str], None] | None = None) -> Any:
    """The preprocessed condition. An image is resized to the trained size unless ``size`` asks for
    another (a larger one is sampled with the sliding window), and the resize is reported."""
    kind = cond_info["kind"]
    if kind in ("image", "first_stage"):
        if input is None:
            raise InputError("this model is conditioned on an image: pass INPUT (e.g. a sketch or label map PNG)")
        res = int(cond_info["resolution"])
        return load_condition(input, cond_info["preprocessing"], size or (res, res), budget, log)
    if input is not None:
        raise InputError(f"this model is {'unconditional' if kind == 'sos' else kind + '-conditional'}: it takes no INPUT")
    if kind == "coord":
        from vqdeploy.runtime.conditions import coord_map

        h, w = size or (cond_info["resolution"], cond_info["resolution"])
        return coord_map(h, w)
    return None


def check_outputs(paths: list[Path]) -> None:
    """Before any work: every output can be written (its directory is created, no directory is in the
    way), so a run never samples for minutes and then fails, or leaves some of its images."""
    for directory in sorted({p.parent for p in paths}):
        check_writable(directory, "--out")
    for p in paths:
        if p.is_dir():
            raise InputError(f"--out: {p} is a directory; name a file (e.g. {p / 'sample.png'})")


def run_pipeline(input: Path | None, artifacts: Path, backend: str, device: str | None, num_samples: int,
                 temperature: float, top_k: int | None, top_p: float | None, seed: int, class_id: int | None,
                 size: str | None, out: Path, grid: bool, ckpt: str | None = None,
                 log: Callable[[str], None] = print, sampler: str = "host",
                 max_pixels: int | None = None, cuda_graphs: bool = False) -> dict[str, Any]:
    manifest = read_manifest(artifacts)
    params = SamplingParams(temperature, top_k, top_p)
    check_seed(seed)
    vocab = int(manifest["model"]["transformer"]["vocab_size"]) if manifest["model"]["kind"] == "net2net" else 0
    if top_k is not None and vocab and top_k > vocab:
        log(f"note: --top-k {top_k} is more than the {vocab} tokens of this model: all are kept")
        params = SamplingParams(temperature, vocab, top_p)
        top_k = vocab
    hw = parse_size(size)
    check_request(manifest["model"], num_samples, hw, max_pixels)
    paths = output_paths(out, num_samples, grid)
    check_outputs(paths)
    cond_info = manifest["model"]["conditioning"]
    if class_id is not None and cond_info["kind"] != "class":
        kind = cond_info["kind"]
        what = "unconditional" if kind == "sos" else f"conditioned on '{cond_info.get('key', kind)}' ({kind})"
        raise InputError(f"--class is for class-conditional models; this model is {what}")
    condition = read_condition(input, cond_info, hw, pixel_budget(manifest["model"], max_pixels), log)
    t = time.perf_counter()
    be = open_backend(backend, artifacts, manifest, device, ckpt, log=log, cuda_graphs=cuda_graphs)
    load_s = time.perf_counter() - t
    progress = TokenProgress(log)
    try:
        result = Pipeline(be, manifest, sampler)(condition, num_samples=num_samples, params=params, seed=seed,
                                                 class_id=class_id, size=hw, progress=progress, max_pixels=max_pixels)
    finally:
        progress.close()
    images = to_uint8(result.images)
    for directory in {p.parent for p in paths}:
        directory.mkdir(parents=True, exist_ok=True)
    write_pngs({paths[0]: grid_image(images)} if grid else dict(zip(paths, images)))
    log("wrote " + ", ".join(str(p) for p in paths))
    return {
        "backend": be.name, "device": be.device, "sampler": sampler, "cuda_graphs": cuda_graphs, "seed": seed,
        "num_samples": num_samples,
        "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p},
        "tokens_per_sample": int(result.tokens[0].size), "sliding_window": result.sliding_window,
        "timings_s": {"load": round(load_s, 4), **{k: round(v, 4) for k, v in result.timings.items()}},
        "tokens_per_s": round(result.tokens_per_second, 2),
        "outputs": [str(p) for p in paths],
    }
