"""``vqdeploy run`` as a library call: one condition in, N images out, a summary back."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vqdeploy.artifacts import Artifacts, open_artifacts
from vqdeploy.conditions import ClassId, Reading
from vqdeploy.errors import InputError, os_error, shown
from vqdeploy.files import check_target, check_writable
from vqdeploy.images import grid_image, output_paths, parse_size, png_bytes, to_uint8, write_images
from vqdeploy.limits import check_num_samples, check_seed, condition_budget
from vqdeploy.runtime.backends.registry import OpenOptions, open_backend
from vqdeploy.runtime.generation import Request, check_decoding, check_size
from vqdeploy.runtime.jacobi import DEFAULT_WINDOW
from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.runtime.progress import TokenProgress
from vqdeploy.runtime.sampling import SamplingParams

STDOUT = Path("-")  # --out -: the image goes to stdout


def check_outputs(paths: list[Path]) -> None:
    """Before any work: every output can be written (its directory is created; only a new name or a regular
    file is replaced: a directory, a symlink, a device node, a FIFO or a socket there is refused), so a run
    never samples for minutes and then fails, or leaves some of its images."""
    for directory in sorted({p.parent for p in paths}):
        check_writable(directory, "--out")
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):  # os.path: a name too long is not a directory
            raise InputError(f"--out: {shown(p)} is a directory; name a file (e.g. {shown(p / 'sample.png')})")
        check_target(p, "--out", " (--out - writes the image to stdout)")


def check_stdout(num_samples: int, grid: bool, save_layout: bool) -> None:
    """``--out -``: one PNG to stdout, which must not be a terminal."""
    if num_samples > 1 and not grid:
        raise InputError("--out - writes one image to stdout: pass --grid (all samples in one image) or "
                         "--num-samples 1")
    if save_layout:
        raise InputError("--out - writes one image to stdout; --save-layout needs a file name for --out")
    if sys.stdout.isatty():
        raise InputError("--out -: stdout is a terminal; redirect it (vqdeploy run ... --out - > sample.png)")


def write_stdout(data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise InputError("--out -: stdout was closed before the image was written") from None
    except OSError as e:
        raise os_error(e, "stdout", "write") from None


@dataclass(frozen=True)
class RunOptions:
    """``vqdeploy run``'s options: where to run, what to sample, where the images go."""

    backend: str = "auto"
    device: str | None = None
    sampler: str = "host"
    cuda_graphs: bool = False
    ckpt: str | None = None  # torch backend: another checkpoint than the exported one
    num_samples: int = 1
    params: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    class_id: int | None = None
    size: str | None = None  # "S" or "WxH"
    max_pixels: int | None = None
    out: Path = Path("samples/sample.png")
    grid: bool = False
    save_layout: bool = False
    decoding: str = "sequential"
    jacobi_window: int = DEFAULT_WINDOW


def run_pipeline(input: Path | None, artifacts: Path | Artifacts, options: RunOptions,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything is checked before the backend opens (artifacts, options, the input, where the images go)."""
    o = options
    backend, device, sampler, cuda_graphs, ckpt = o.backend, o.device, o.sampler, o.cuda_graphs, o.ckpt
    num_samples, params, seed, class_id, size, max_pixels = o.num_samples, o.params, o.seed, o.class_id, o.size, \
        o.max_pixels
    out, grid, save_layout = o.out, o.grid, o.save_layout
    opened = open_artifacts(artifacts)
    check_seed(seed)
    check_num_samples(num_samples)  # with the option's name, before the outputs are worked out
    info = opened.manifest.model
    cond, tr = info.sampling()
    if params.top_k is not None and params.top_k > tr.vocab_size:
        log(f"note: --top-k {params.top_k} is more than the {tr.vocab_size} tokens of this model: all are kept")
        params = replace(params, top_k=tr.vocab_size)
    cond.check_guidance(params.guided, "--cfg-scale")
    check_decoding(o.decoding, params, "--cfg-scale")
    hw = parse_size(size)
    if hw is not None:
        check_size(info, hw, max_pixels)
    to_stdout = out == STDOUT
    paths = [out] if to_stdout else output_paths(out, num_samples, grid)
    if save_layout and not cond.draws_layout:
        raise InputError("--save-layout is for object-layout (scene) models")
    if to_stdout:
        check_stdout(num_samples, grid, save_layout)
    layout_path = out.with_name(f"{out.stem}-layout.png") if save_layout else None
    if not to_stdout:
        check_outputs(paths + ([layout_path] if layout_path else []))
    if class_id is not None and input is not None and cond.classes:
        raise InputError("this model is class-conditional: it takes no INPUT; pass --class ID alone")
    raw = ClassId(class_id) if class_id is not None else input
    value = cond.read(raw, Reading(hw, condition_budget(info, max_pixels), log, "cli"))
    request = Request(value, num_samples, params, seed, hw)
    t = time.perf_counter()
    be = open_backend(backend, opened, device, OpenOptions(cuda_graphs=cuda_graphs, ckpt=ckpt), log=log)
    load_s = time.perf_counter() - t
    pipe = Pipeline(be, opened.manifest, sampler, o.decoding, o.jacobi_window)
    progress = TokenProgress(log)
    try:
        result = pipe.sample(request, progress)
    finally:
        progress.close()
    jacobi = pipe.generator.jacobi_stats.tokens_per_call if o.decoding == "jacobi" else None
    images = to_uint8(result.images)
    if to_stdout:
        write_stdout(png_bytes(grid_image(images) if grid else images[0]))
        log("wrote the image to stdout")
        return summary(be, o, params, result, load_s, ["-"], None, jacobi)
    for directory in {p.parent for p in paths}:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, directory, "create") from None
    pictures = {paths[0]: grid_image(images)} if grid else dict(zip(paths, images))
    if layout_path is not None:  # the layout the model got, decoded from its tokens
        h, w = images.shape[1:3]
        picture = cond.picture(value, (max(h, 256), max(w, 256)))
        if picture is not None:
            pictures[layout_path] = picture
    write_images(pictures)
    log("wrote " + ", ".join(shown(p) for p in pictures))
    return summary(be, o, params, result, load_s, [str(p) for p in paths], layout_path, jacobi)


def summary(be: Any, o: RunOptions, params: SamplingParams, result: Any, load_s: float, outputs: list[str],
            layout_path: Path | None, jacobi: float | None = None) -> dict[str, Any]:
    """``run --json``'s summary."""
    return {
        "backend": be.name, "device": be.device, "sampler": o.sampler, "cuda_graphs": o.cuda_graphs, "seed": o.seed,
        "num_samples": o.num_samples,
        "decoding": o.decoding, **({"jacobi_tokens_per_call": round(jacobi, 3)} if jacobi is not None else {}),
        "sampling": {"temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
                     **({"cfg_scale": params.cfg_scale, "cfg_interval": params.cfg_interval} if params.guided else {})},
        "tokens_per_sample": int(result.tokens[0].size), "sliding_window": result.sliding_window,
        "timings_s": {"load": round(load_s, 4), **{k: round(v, 4) for k, v in result.timings.items()}},
        "tokens_per_s": round(result.tokens_per_second, 2),
        "outputs": outputs,
        **({"layout": str(layout_path)} if layout_path else {}),
    }
