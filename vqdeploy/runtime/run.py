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
from vqdeploy.runtime.images import grid_image, output_paths, parse_size, to_uint8, write_pngs
from vqdeploy.runtime.pipeline import Pipeline, check_request
from vqdeploy.runtime.progress import TokenProgress
from vqdeploy.runtime.sampling import SamplingParams


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
                 max_pixels: int | None = None, cuda_graphs: bool = False,
                 save_layout: bool = False) -> dict[str, Any]:
    manifest = read_manifest(artifacts)
    params = SamplingParams(temperature, top_k, top_p)
    check_seed(seed)
    info = manifest.model
    vocab = info.transformer.vocab_size if info.transformer is not None else 0
    if top_k is not None and vocab and top_k > vocab:
        log(f"note: --top-k {top_k} is more than the {vocab} tokens of this model: all are kept")
        params = SamplingParams(temperature, vocab, top_p)
        top_k = vocab
    hw = parse_size(size)
    check_request(info, num_samples, hw, max_pixels)
    paths = output_paths(out, num_samples, grid)
    cond, _ = info.sampling()
    if save_layout and not cond.draws_layout:
        raise InputError("--save-layout is for object-layout (scene) models")
    layout_path = out.with_name(f"{out.stem}-layout.png") if save_layout else None
    check_outputs(paths + ([layout_path] if layout_path else []))
    if class_id is not None:
        cond.check_class(class_id)
    condition = cond.read_input(input, hw, pixel_budget(info, max_pixels), log)
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
    pictures = {paths[0]: grid_image(images)} if grid else dict(zip(paths, images))
    if layout_path is not None:  # the layout the model got, decoded from its tokens
        h, w = images.shape[1:3]
        picture = cond.picture(condition, (max(h, 256), max(w, 256)))
        if picture is not None:
            pictures[layout_path] = picture
    write_pngs(pictures)
    log("wrote " + ", ".join(str(p) for p in pictures))
    return {
        "backend": be.name, "device": be.device, "sampler": sampler, "cuda_graphs": cuda_graphs, "seed": seed,
        "num_samples": num_samples,
        "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p},
        "tokens_per_sample": int(result.tokens[0].size), "sliding_window": result.sliding_window,
        "timings_s": {"load": round(load_s, 4), **{k: round(v, 4) for k, v in result.timings.items()}},
        "tokens_per_s": round(result.tokens_per_second, 2),
        "outputs": [str(p) for p in paths],
        **({"layout": str(layout_path)} if layout_path else {}),
    }
