"""``vqdeploy serve``: one process, one backend, uvicorn in front."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import click

from vqdeploy.commands.options import (
    BACKEND,
    BACKEND_HELP,
    CUDA_GRAPHS_HELP,
    DECODING,
    DECODING_HELP,
    DEVICE,
    DEVICE_HELP,
    JACOBI_WINDOW_HELP,
    SAMPLER_HELP,
)
from vqdeploy.errors import BackendError, InputError, shown
from vqdeploy.limits import (
    MAX_INFLIGHT_UPLOAD_BYTES,
    MAX_SAMPLES,
    MAX_UPLOAD_BYTES,
    READ_TIMEOUT_S,
    check_finite,
    check_int,
)
from vqdeploy.runtime.decoding import SAMPLERS
from vqdeploy.runtime.jacobi import DEFAULT_WINDOW, check_window
from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.serve.intake import return_freed_memory, uvicorn_config

SERVE_EXAMPLE = """\b
Examples:
  vqdeploy serve --artifacts artifacts/demo --port 8000        # then open http://127.0.0.1:8000/
  curl -F condition=@sketch.png -F seed=3 -F num_samples=2 http://127.0.0.1:8000/v1/generate
  vqdeploy serve --artifacts artifacts/demo --max-batch 16 --max-wait-ms 20 --max-queue 64
"""


def require_serve_extra() -> None:
    """One line instead of an ImportError when the ``serve`` extra is missing."""
    try:
        import multipart  # noqa: F401  (python-multipart)
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise BackendError(f"serve needs its extra: pip install 'vqdeploy[serve]' ({e.name} is missing)") from None


@click.command(epilog=SERVE_EXAMPLE)
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path),
              help="Artifacts directory written by `vqdeploy export`.")
@click.option("--backend", type=BACKEND, default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--device", type=DEVICE, default=None, help=DEVICE_HELP)
@click.option("--sampler", type=click.Choice(SAMPLERS), default="host", show_default=True, help=SAMPLER_HELP)
@click.option("--decoding", type=DECODING, default="sequential", show_default=True, help=DECODING_HELP)
@click.option("--jacobi-window", type=int, default=DEFAULT_WINDOW, show_default=True, help=JACOBI_WINDOW_HELP)
@click.option("--cuda-graphs", is_flag=True, help=CUDA_GRAPHS_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 exposes the server to the network (there is no authentication).")
@click.option("--port", type=int, default=8000, show_default=True, help="TCP port to listen on.")
@click.option("--max-batch", type=int, default=None,
              help="Samples per engine batch, shared by concurrent requests (default and cap: the backend's limit).")
@click.option("--batching", type=click.Choice(["request", "continuous"]), default="request", show_default=True,
              help="request: whole requests are batched, and one arriving meanwhile waits for the batch to finish; "
                   "continuous: a request's samples join the running batch at the next token step and leave it when "
                   "done (guided, Jacobi, larger-size and --sampler graph requests run as batches of their own).")
@click.option("--max-wait-ms", type=float, default=20.0, show_default=True,
              help="How long the oldest waiting request waits for others to share its batch (--batching request).")
@click.option("--max-queue", type=int, default=32, show_default=True,
              help="Requests that may wait for the engine; beyond it requests get 429 with Retry-After.")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True,
              help="Seconds from a request's arrival to its answer; later it gets 504 and its samples are dropped.")
@click.option("--max-samples", type=int, default=16, show_default=True, help="Largest num_samples of one request.")
@click.option("--max-upload-bytes", type=int, default=MAX_UPLOAD_BYTES, show_default=True,
              help="Largest request body (the condition image included); larger gets 413.")
@click.option("--max-pixels", type=int, default=None,
              help="Largest condition image in pixels (default: 16x the trained area); larger gets 413.")
@click.option("--max-inflight-upload-bytes", type=int, default=MAX_INFLIGHT_UPLOAD_BYTES, show_default=True,
              help="Request bodies being received at once, in bytes (each reserves its Content-Length before it is "
                   "read); beyond it requests get 503 with Retry-After. Bounds the memory uploads hold.")
@click.option("--read-timeout", "read_timeout_s", type=float, default=READ_TIMEOUT_S, show_default=True,
              help="Seconds a client has to send a request's headers, and then its body; later it gets 408 and the "
                   "connection is closed.")
def serve(artifacts: Path, backend: str, device: str | None, sampler: str, decoding: str, jacobi_window: int,
          cuda_graphs: bool, host: str, port: int,
          max_batch: int | None, batching: str,
          max_wait_ms: float, max_queue: int, timeout_s: float, max_samples: int, max_upload_bytes: int,
          max_pixels: int | None, max_inflight_upload_bytes: int, read_timeout_s: float) -> None:
    """Serve the model over HTTP: POST /v1/generate (and /v1/generate/stream for progress events),
    GET /v1/model, /healthz, /metrics (Prometheus) and a sketch pad page at /.

    Concurrent requests share engine batches (request-level batching with a bounded wait); --batching continuous
    lets a request's samples join the running batch at the next token step. Needs the serve
    extra: pip install 'vqdeploy[serve]'."""
    check_int(port, "--port", 0, 65535)
    if max_batch is not None:
        check_int(max_batch, "--max-batch", 1, MAX_SAMPLES)
    check_finite(max_wait_ms, "--max-wait-ms", low=0.0, high=10_000.0)
    check_int(max_queue, "--max-queue", 1, 1 << 20)
    check_finite(timeout_s, "--timeout", low=0.0, low_open=True)
    check_int(max_samples, "--max-samples", 1, MAX_SAMPLES)
    check_int(max_upload_bytes, "--max-upload-bytes", 1, 1 << 30)
    if max_pixels is not None:
        check_int(max_pixels, "--max-pixels", 1, 2**40)
    check_int(max_inflight_upload_bytes, "--max-inflight-upload-bytes", 1, 1 << 40)
    if max_inflight_upload_bytes < max_upload_bytes:
        raise InputError(f"--max-inflight-upload-bytes {max_inflight_upload_bytes} is below --max-upload-bytes "
                         f"{max_upload_bytes}: no request of the largest size could ever be read")
    check_finite(read_timeout_s, "--read-timeout", low=0.0, high=3600.0, low_open=True)
    require_serve_extra()
    import uvicorn

    from vqdeploy.serve.app import ServeConfig, create_app  # the serve extra

    sock = listen(host, port)  # before the model loads: a port in use is one line, at once
    return_freed_memory()  # uploads' memory goes back to the system when they end
    pipeline = Pipeline.from_artifacts(artifacts, backend, device, sampler, cuda_graphs,
                                       log=lambda m: click.echo(m, err=True), decoding=decoding,
                                       jacobi_window=check_window(jacobi_window))
    config = ServeConfig(max_batch, max_wait_ms / 1000.0, max_queue, timeout_s, max_upload_bytes, max_samples,
                         max_pixels, max_inflight_upload_bytes, read_timeout_s, batching)
    app = create_app(pipeline, config, access_log=lambda m: click.echo(m, err=True))  # one line per request
    bound = sock.getsockname()
    where = f"[{bound[0]}]:{bound[1]}" if sock.family == socket.AF_INET6 else f"{bound[0]}:{bound[1]}"
    click.echo(f"serving {shown(artifacts)} with {pipeline.backend.name} ({pipeline.backend.device}) on "
               f"http://{where}/", err=True)
    uvicorn.Server(uvicorn_config(app, host, bound[1])).run(sockets=[sock])


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn listens on it): an address in use or a host that does not
    resolve is one error line before anything else happens."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise InputError(f"--host {shown(host)}: cannot resolve it ({getattr(e, 'strerror', None) or e})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart reuses the port at once
        sock.bind(address)
        sock.listen(2048)  # as uvicorn's backlog: a client that connects once "serving" is printed waits, not refused
    except OSError as e:
        sock.close()
        hint = "; another server is using it: stop it or pass another --port" if e.errno == errno.EADDRINUSE else ""
        raise InputError(f"cannot listen on {shown(host)}:{port}: {e.strerror or e}{hint}") from None
    sock.set_inheritable(True)
    return sock
