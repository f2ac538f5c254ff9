"""The HTTP application (Starlette): generate (JSON or a server-sent event stream), model, health,
metrics and the sketch pad page. One backend per process, driven by the ``Batcher``'s thread; the event
loop only parses, queues and answers. Starlette is imported where the app is built (the ``serve`` extra).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from vqdeploy.errors import InputError, TooLargeError, UnsupportedInputError, VQDeployError
from vqdeploy.limits import MAX_INFLIGHT_UPLOAD_BYTES, MAX_UPLOAD_BYTES, READ_TIMEOUT_S, pixel_budget
from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.runtime.sampling import SamplingParams
from vqdeploy.serve.batcher import Batcher, QueueFull
from vqdeploy.serve.continuous import ContinuousBatcher
from vqdeploy.serve.intake import Intake, IntakeLimits
from vqdeploy.serve.metrics import Metrics
from vqdeploy.serve.requests import (
    FIELDS,
    FieldError,
    GenerateRequest,
    condition_bytes,
    encode_pngs,
    parse_fields,
    read_condition,
)
from vqdeploy.serve.runner import Abandoned, BatchRunner, Item, Job, JobResult

ROUTES = ("/", "/favicon.ico", "/v1/generate", "/v1/generate/stream", "/v1/model", "/healthz", "/metrics")
# the page's icon (browsers ask for /favicon.ico whatever the page says): a sketched house, as SVG
FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           b'fill="#2a6df4"/><path d="M3 8 8 3.5 13 8M4.5 7v6h7V7" fill="none" stroke="#fff" stroke-width="1.6"/>'
           b'</svg>')
BATCHING = ("continuous", "request")  # step-level (rows join the running batch) or request-level batches
PROGRESS_EVERY_S = 0.05  # progress events are coalesced to at most one per 50 ms


@dataclass
class ServeConfig:
    """Limits of one server; each is an option of ``vqdeploy serve``."""

    max_batch: int | None = None  # rows per batch (default and cap: the backend's batch limit)
    max_wait_s: float = 0.02  # how long the oldest request waits for others to share its batch
    max_queue: int = 32  # requests waiting beyond the running batch; more get 429
    request_timeout_s: float = 120.0  # arrival to answer; then 504 and the request's rows are dropped
    max_upload_bytes: int = MAX_UPLOAD_BYTES  # a whole request body
    max_samples: int = 16  # num_samples per request
    max_pixels: int | None = None  # condition image budget (default: 16x the trained area)
    max_inflight_upload_bytes: int = MAX_INFLIGHT_UPLOAD_BYTES  # all bodies being received at once; then 503
    read_timeout_s: float = READ_TIMEOUT_S  # a request's headers, and then its body; then 408
    # "request": whole requests share batches; "continuous": samples join the running batch at step boundaries (lower
    # latency under light load, measured; less throughput near saturation on a 2-core CPU: docs/serve.md)
    batching: str = "request"


class Server:
    """What the routes share: the pipeline, its batch runner and batcher, the metrics, the limits."""

    def __init__(self, pipeline: Pipeline, config: ServeConfig) -> None:
        self.pipeline = pipeline
        self.info = pipeline.info
        self.config = config
        self.metrics = Metrics()
        self.runner = BatchRunner(pipeline.generator)
        if config.batching not in BATCHING:
            raise InputError(f"--batching {config.batching}: expected one of {', '.join(BATCHING)}")
        self.batcher: Batcher | ContinuousBatcher = (
            ContinuousBatcher(self.runner, config.max_batch, config.max_queue, self._on_batch)
            if config.batching == "continuous" else
            Batcher(self.runner, config.max_batch, config.max_wait_s, config.max_queue, self._on_batch))
        self.started = time.time()

    def _on_batch(self, batch: list[Item], timings: dict[str, float]) -> None:
        """A request-level batch ran, or (continuous batching) a request finished: ``timings["rows"]`` is then the
        mean number of rows of the steps it ran in, what the batch-size metrics observe."""
        samples = sum(it.count for it in batch)
        rows = timings.get("rows", samples)
        self.metrics.batch(rows, len({id(it.job) for it in batch}), samples * self.runner.steps, timings)
        self._queue_gauges()

    def header_timeout(self) -> None:
        """A connection that did not send its request's headers in time (answered 408 by the protocol)."""
        self.metrics.requests.labels("other", "408").inc()
        self.metrics.rejected.labels("read_timeout").inc()

    def client_abort(self, scope: dict[str, Any]) -> None:
        """A client that went away before its body was complete."""
        self.metrics.requests.labels(route_of(scope), "499").inc()
        self.metrics.rejected.labels("client_abort").inc()

    def _queue_gauges(self) -> None:
        self.metrics.queue_jobs.set(self.batcher.waiting_jobs())
        self.metrics.queue_rows.set(self.batcher.waiting_rows())

    def model(self) -> dict[str, Any]:
        """What a client needs to build a request: the manifest's model description and the limits."""
        raw = self.pipeline.manifest.raw["model"]
        info = {k: v for k, v in raw.items() if k != "permuter"}
        info["permuter"] = {"name": raw["permuter"].get("name")}
        d = SamplingParams()
        return {
            "model": info,
            "backend": {"name": self.pipeline.backend.name, "device": self.pipeline.backend.device,
                        "sampler": self.pipeline.sampler},
            "defaults": {"seed": GenerateRequest().seed, "num_samples": GenerateRequest().num_samples,
                         "temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p,
                         # a model that can be guided (a null condition): classifier-free guidance's fields
                         **({"cfg_scale": d.cfg_scale, "cfg_interval": d.cfg_interval}
                            if self.pipeline.cond.null_tokens() is not None else {})},
            "limits": {"max_samples": self.config.max_samples, "max_upload_bytes": self.config.max_upload_bytes,
                       "max_pixels": pixel_budget(self.info, self.config.max_pixels),
                       "max_batch": self.batcher.max_batch, "max_queue": self.config.max_queue,
                       "request_timeout_s": self.config.request_timeout_s,
                       "max_inflight_upload_bytes": self.config.max_inflight_upload_bytes,
                       "read_timeout_s": self.config.read_timeout_s},
            "fields": list(FIELDS),
        }


def error(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"field": field, "message": message, "status": status}}, status, headers=headers)


class ClientAbort(Exception):
    """The client went away before its request was read."""


async def read_body(request: Any, limit: int) -> bytes:
    """The whole body, refused (413) past ``limit`` bytes whether or not Content-Length says so (``Intake``
    already read it within the limits; this holds for the app without it, too)."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise FieldError("body", f"the request body is {declared} bytes, over the limit of {limit}", 413)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise FieldError("body", f"the request body is over the limit of {limit} bytes", 413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientAbort from None
    return b"".join(chunks)


async def parse_body(request: Any, limit: int) -> tuple[dict[str, Any], bytes | None]:
    """(fields, condition bytes) of a multipart/form-data or JSON body, parsed in memory (the file
    part is never spooled to disk: the spool limit is above the body limit)."""
    body = await read_body(request, limit)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body and ctype in ("", "multipart/form-data", "application/json"):
        return {}, None
    if ctype == "application/json":
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise FieldError("body", "the JSON body must be an object of fields")
            cond = data.pop("condition", None)
            if isinstance(cond, dict):  # a scene, for object-layout models
                return data, json.dumps(cond).encode()
        except RecursionError:
            raise FieldError("body", "malformed JSON: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as e:  # also a number of more than 4300 digits
            raise FieldError("body", f"malformed JSON: {str(e).splitlines()[0][:200]}") from None
        return data, (None if cond is None else condition_bytes(cond))
    if ctype == "application/x-www-form-urlencoded":  # an HTML form without a file
        from urllib.parse import parse_qsl

        fields = {}
        try:
            pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True, max_num_fields=len(FIELDS) + 1)
        except ValueError:  # more fields than a request has
            raise FieldError("body", f"too many form fields (a request has at most {len(FIELDS)})") from None
        for name, value in pairs:
            if name in fields:
                raise FieldError(name, f"field {name!r} is given more than once")
            fields[name] = value
        if "condition" in fields:
            raise FieldError("condition", "condition must be a file part (an image): send multipart/form-data")
        return fields, None
    if ctype != "multipart/form-data":
        raise FieldError("body", f"Content-Type {ctype or '(none)'}: send multipart/form-data, "
                                 "application/x-www-form-urlencoded or application/json", 415)
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncIterator[bytes]:
        yield body
        yield b""

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=len(FIELDS), max_part_size=limit)
    parser.spool_max_size = limit + 1
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise FieldError("body", f"malformed multipart body: {e.message}") from None
    fields: dict[str, Any] = {}
    condition = None
    try:
        for name, value in form.multi_items():
            if name in fields or (name == "condition" and condition is not None):
                raise FieldError(name, f"field {name!r} is given more than once")
            if hasattr(value, "read"):  # an UploadFile
                if name != "condition":
                    raise FieldError(name, f"field {name!r} is not a file; only 'condition' is")
                condition = await value.read()
            elif name == "condition":
                raise FieldError("condition", "condition must be a file part (an image), not a text field")
            else:
                fields[name] = value
    finally:
        await form.close()
    return fields, condition


def result_json(result: JobResult, req: GenerateRequest) -> dict[str, Any]:
    p = req.params
    return {"images": encode_pngs(result.images), "seed": req.seed, "tokens": result.tokens.tolist(),
            "num_samples": req.num_samples,
            "params": {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "class_id": req.class_id,
                       **({"cfg_scale": p.cfg_scale, "cfg_interval": p.cfg_interval} if p.guided else {})},
            "timings_s": {k: round(v, 4) for k, v in result.timings.items()}, "notes": req.notes}


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Call:
    """One generate request on its way through the queue: the asyncio side of a ``Job``."""

    def __init__(self, server: Server, req: GenerateRequest) -> None:
        loop = asyncio.get_running_loop()
        self.server = server
        self.req = req
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.future: asyncio.Future[Any] = loop.create_future()
        self.arrived = time.perf_counter()
        self.started = 0.0
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if not self.started:
                self.started = now
                server.metrics.queue_wait.observe(now - self.arrived)
            if done == total or now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                loop.call_soon_threadsafe(self.events.put_nowait, ("progress", {"done": done, "total": total}))

        def partial(rows: int, images: list[np.ndarray]) -> None:
            loop.call_soon_threadsafe(self.events.put_nowait, ("partial", (rows, np.stack(images))))

        def done(result: Any) -> None:
            loop.call_soon_threadsafe(self._finish, result)

        self.job = Job(req, progress, partial, done)
        # an answer that nobody waits for any more (the client left, the request timed out) is read here, so
        # asyncio does not print "Future exception was never retrieved" for it
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _finish(self, result: Any) -> None:
        if not self.future.done():
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)
            self.events.put_nowait(("done", None))

    def submit(self) -> None:
        self.server.batcher.submit(self.job)
        self.server._queue_gauges()

    @property
    def remaining(self) -> float:
        return self.server.config.request_timeout_s - (time.perf_counter() - self.arrived)

    def cancel(self, reason: str) -> None:
        if not self.job.cancelled.is_set() and not self.future.done():
            self.server.metrics.rejected.labels(reason).inc()
        self.job.cancelled.set()
        self.server._queue_gauges()


def failure(e: BaseException) -> Any:
    """The JSON answer for an exception from parsing or sampling."""
    if isinstance(e, ClientAbort):  # nobody reads it; counted as 499
        from starlette.responses import Response

        return Response(status_code=499)
    if isinstance(e, FieldError):
        return error(e.status, str(e), e.field)
    if isinstance(e, QueueFull):
        return error(429, f"the queue is full ({e}); retry later", None, {"Retry-After": str(e.retry_after)})
    if isinstance(e, TooLargeError):
        return error(413, str(e))
    if isinstance(e, UnsupportedInputError):
        return error(415, str(e))
    if isinstance(e, InputError):
        return error(400, str(e))
    if isinstance(e, VQDeployError):
        return error(500, str(e))
    return error(500, f"internal error: {type(e).__name__}: {e}")


class Routes:
    """The application's handlers over one ``Server`` (each a Starlette endpoint)."""

    def __init__(self, server: Server) -> None:
        self.server = server

    async def prepare(self, request: Any) -> Call:
        """Parse, read the condition (in a worker thread: decoding an image is work) and queue the request."""
        from starlette.concurrency import run_in_threadpool

        server = self.server
        try:
            fields, data = await parse_body(request, server.config.max_upload_bytes)
        except ClientAbort:
            server.metrics.rejected.labels("client_abort").inc()
            raise
        req = parse_fields(fields, server.info, server.config.max_samples, server.config.max_pixels)
        try:  # what this server's pipeline can sample (e.g. no guidance with --decoding jacobi), before queueing
            server.pipeline.generator.check_params(req.params)
        except InputError as e:
            raise FieldError("cfg_scale", str(e)) from None
        await run_in_threadpool(read_condition, data, req, server.info, server.config.max_pixels)
        call = Call(server, req)
        try:
            call.submit()
        except QueueFull:
            server.metrics.rejected.labels("queue_full").inc()
            raise
        return call

    async def answer(self, call: Call, route: str) -> Any:
        """The JSON answer of a finished call."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        body = await run_in_threadpool(result_json, call.future.result(), call.req)
        self.server.metrics.images.inc(call.req.num_samples)
        self.server.metrics.latency.labels(route).observe(time.perf_counter() - call.arrived)
        return JSONResponse(body)

    async def generate(self, request: Any) -> Any:
        from starlette.responses import Response

        server = self.server
        try:
            call = await self.prepare(request)
        except Exception as e:  # noqa: BLE001 (every failure is a JSON answer)
            return failure(e)
        access(request)["batches"] = call.job.batches
        while not call.future.done():
            if call.remaining <= 0:
                call.cancel("timeout")
                return error(504, f"the request took longer than {server.config.request_timeout_s}s")
            await asyncio.wait({call.future}, timeout=min(0.25, call.remaining))
            if not call.future.done() and await request.is_disconnected():
                call.cancel("disconnected")
                return Response(status_code=499)
        try:
            return await self.answer(call, "/v1/generate")
        except Abandoned:
            return error(504, "the request was abandoned")
        except Exception as e:  # noqa: BLE001
            return failure(e)

    async def generate_stream(self, request: Any) -> Any:
        """Server-sent events: queued, progress {done,total} (tokens), partial {rows,images} when
        partial_every asks for it, then result (the JSON answer of /v1/generate) or error."""
        from starlette.responses import StreamingResponse

        try:
            call = await self.prepare(request)
        except Exception as e:  # noqa: BLE001
            return failure(e)
        access(request)["batches"] = call.job.batches
        return StreamingResponse(self.events(call), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def events(self, call: Call) -> AsyncIterator[bytes]:
        from starlette.concurrency import run_in_threadpool

        server = self.server
        try:
            yield sse("queued", {"waiting": server.batcher.waiting_jobs(),
                                 "total": call.req.num_samples * server.runner.steps_of(call.req)})
            while True:
                if call.remaining <= 0:
                    call.cancel("timeout")
                    message = f"the request took longer than {server.config.request_timeout_s}s"
                    yield sse("error", {"error": {"field": None, "status": 504, "message": message}})
                    return
                try:
                    kind, data = await asyncio.wait_for(call.events.get(), timeout=min(1.0, call.remaining))
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"  # a write: a client that left is noticed here
                    continue
                if kind == "progress":
                    yield sse("progress", data)
                elif kind == "partial":
                    rows, images = data
                    yield sse("partial", {"rows": rows, "images": await run_in_threadpool(encode_pngs, images)})
                elif kind == "done":
                    break
            try:
                answer = await self.answer(call, "/v1/generate/stream")
            except Exception as e:  # noqa: BLE001
                yield sse("error", json.loads(failure(e).body))
                return
            yield sse("result", json.loads(answer.body))
        finally:
            if not call.future.done():
                call.cancel("disconnected")

    async def model(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse(self.server.model())

    async def healthz(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        server = self.server
        return JSONResponse({"status": "ok", "backend": server.pipeline.backend.name,
                             "queue": server.batcher.waiting_jobs(), "uptime_s": round(time.time() - server.started, 1)})

    async def metrics(self, request: Any) -> Any:
        from starlette.responses import Response

        self.server._queue_gauges()
        body, ctype = self.server.metrics.render()
        return Response(body, media_type=ctype)

    async def page(self, request: Any) -> Any:
        from starlette.responses import HTMLResponse

        return HTMLResponse(resources.files("vqdeploy.serve").joinpath("page/index.html").read_text("utf-8"))

    async def favicon(self, request: Any) -> Any:
        from starlette.responses import Response

        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    async def http_error(self, request: Any, exc: Exception) -> Any:
        return error(getattr(exc, "status_code", 500), getattr(exc, "detail", None) or "error",
                     headers=getattr(exc, "headers", None))

    async def internal_error(self, request: Any, exc: Exception) -> Any:
        return failure(exc)


def create_app(pipeline: Pipeline, config: ServeConfig | None = None,
               access_log: Callable[[str], None] | None = None) -> Any:
    """The Starlette application serving ``pipeline`` (the batch thread starts with the first request
    or the app's startup, and stops at its shutdown). ``access_log`` hears one line per answered request
    (``access_line``; default: the ``vqdeploy.serve.access`` logger at INFO)."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    server = Server(pipeline, config or ServeConfig())
    routes = Routes(server)
    # a malformed multipart body is a 400 to its client, not a line in the server's log per request (python-multipart
    # logs each at warning level, which Python's last-resort handler prints)
    logging.getLogger("python_multipart").setLevel(logging.ERROR)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        server.batcher.start()
        yield
        server.batcher.stop()

    app = Starlette(
        routes=[Route("/", routes.page), Route("/favicon.ico", routes.favicon),
                Route("/v1/generate", routes.generate, methods=["POST"]),
                Route("/v1/generate/stream", routes.generate_stream, methods=["POST"]), Route("/v1/model", routes.model),
                Route("/healthz", routes.healthz), Route("/metrics", routes.metrics)],
        exception_handlers={HTTPException: routes.http_error, Exception: routes.internal_error},
        lifespan=lifespan,
    )
    app.state.server = server
    limits = IntakeLimits(server.config.max_upload_bytes, server.config.max_inflight_upload_bytes,
                          server.config.read_timeout_s)
    return CountRequests(Intake(app, limits, server.client_abort), server, app.state,
                         access_log or logging.getLogger("vqdeploy.serve.access").info)


ACCESS = "vqdeploy.access"  # the scope key of what a handler adds to its request's access line


def access(request: Any) -> dict[str, Any]:
    """What the access line of ``request`` reports besides method, path, status and time (``batches``)."""
    return request.scope.setdefault(ACCESS, {})


def access_line(scope: dict[str, Any], status: int, seconds: float) -> str:
    """``127.0.0.1:50312 "POST /v1/generate" 200 0.84 s batch 4``: the client, the request, the status, the
    time from arrival to the last byte, and the rows of the engine batch(es) the request's samples ran in."""
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "-"
    line = f'{who} "{scope.get("method", "-")} {scope.get("path", "")}" {status} {seconds:.2f} s'
    batches = scope.get(ACCESS, {}).get("batches")
    if batches:
        line += (" batch " if len(batches) == 1 else " batches ") + "+".join(str(b) for b in batches)
    return line


def route_of(scope: dict[str, Any]) -> str:
    """The route a request is counted under (an unknown path: "other")."""
    path = scope.get("path", "")
    return path if path in ROUTES else "other"


class CountRequests:
    """ASGI middleware: every answer counted by route and status code, the worker's pid in a header
    (which replica answered, behind a load balancer), and one access line per request once it is answered."""

    def __init__(self, app: Any, server: Server, state: Any, log: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.server = server  # what ``intake.uvicorn_config`` reads the limits from
        self.metrics = server.metrics
        self.state = state
        self.pid = str(os.getpid()).encode()
        self.log = log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_of(scope)
        started = time.perf_counter()
        status = [0]
        scope.setdefault(ACCESS, {})

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                self.metrics.requests.labels(route, str(message["status"])).inc()
                message = {**message, "headers": [*message.get("headers", []), (b"x-vqdeploy-pid", self.pid)]}
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if self.log is not None:
                # a client that left before an answer started is logged as nginx does: 499
                self.log(access_line(scope, status[0] or 499, time.perf_counter() - started))

