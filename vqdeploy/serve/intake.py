"""What a request may cost the server before the application sees it: bytes held and time waited.

The queue limit (429) and the request timeout (504) apply once a request is parsed; a client can cost
memory and a connection before that, by declaring a large body and sending it slowly, or by never
finishing its headers. So, before any route runs:

- ``--max-upload-bytes``: a body over it is 413, on its ``Content-Length`` before anything is read, or as
  soon as a chunked body grows past it.
- ``--max-inflight-upload-bytes``: the bytes of all request bodies being received (and held, until their
  answer) at once. A request reserves its ``Content-Length`` before its body is read (a chunked one, each
  chunk as it comes); a reservation past the budget is 503 with ``Retry-After``, at once, without reading
  the body. Memory held by uploads is bounded by the budget, whatever the clients do.
- ``--read-timeout``: a request's headers must arrive within it (from the connection, or from the first
  byte after the previous answer: ``deadline_protocol``) and its body within it of its headers
  (``Intake``); otherwise 408 and the connection is closed. Headers are parsed by h11, which bounds them
  (uvicorn's ``h11_max_incomplete_event_size``, 16 KiB).

A client that goes away during its upload is counted as a client abort
(``vqdeploy_rejected_total{reason="client_abort"}``, ``vqdeploy_requests_total{code="499"}``), not a 500.

uvicorn has no timeout for receiving a request (its keep-alive timeout covers only the idle time between
requests, and is cancelled by the first byte of the next one), so the header deadline is a subclass of
its h11 protocol; everything else is ASGI middleware. Nothing here imports uvicorn or Starlette at import
time (the ``serve`` extra).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vqdeploy.limits import MAX_INFLIGHT_UPLOAD_BYTES, READ_TIMEOUT_S

RETRY_AFTER_S = 1


@dataclass(frozen=True)
class IntakeLimits:
    max_upload_bytes: int
    max_inflight_upload_bytes: int = MAX_INFLIGHT_UPLOAD_BYTES
    read_timeout_s: float = READ_TIMEOUT_S


class UploadBudget:
    """Bytes reserved by the bodies being received. One event loop touches it: no lock."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.total:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class Reservation:
    """What one request holds of the budget."""

    def __init__(self, budget: UploadBudget) -> None:
        self.budget = budget
        self.n = 0

    def take(self, n: int) -> bool:
        if not self.budget.take(n):
            return False
        self.n += n
        return True

    def release(self) -> None:
        self.budget.give(self.n)
        self.n = 0


def error_body(status: int, message: str, field: str | None = None) -> bytes:
    """The JSON error every answer of the server has (``app.error``)."""
    return json.dumps({"error": {"field": field, "message": message, "status": status}}).encode()


class Refused(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Intake:
    """ASGI middleware: a request with a body gets it only within the limits above (its body is read here,
    within the budget and the deadline, then handed to the application as one message)."""

    def __init__(self, app: Any, limits: IntakeLimits, on_abort: Callable[[dict[str, Any]], None]) -> None:
        self.app = app
        self.limits = limits
        self.budget = UploadBudget(limits.max_inflight_upload_bytes)
        self.on_abort = on_abort

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if length is None and not chunked:  # no body (the server parsed the framing: nothing follows)
            await self.app(scope, receive, send)
            return
        held = Reservation(self.budget)
        try:
            declared = None if chunked or length is None else int(length)  # h11 checked that it is digits
            limit = self.limits.max_upload_bytes
            if declared is not None and declared > limit:
                raise Refused(413, f"the request body is {declared} bytes, over the limit of {limit}")
            if declared is not None and not held.take(declared):
                raise self.busy()
            body = await self.read(receive, declared, held)
        except Refused as e:
            held.release()
            await self.refuse(send, e)
            return
        except _Aborted:
            held.release()
            self.on_abort(scope)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed, body
            if not replayed:
                replayed = True
                message = {"type": "http.request", "body": bytes(body), "more_body": False}
                body = bytearray()  # one copy of the body from here on
                return message
            return await receive()  # after the body: a disconnect, when the client leaves

        try:
            await self.app(scope, replay, send)
        finally:
            held.release()

    def busy(self) -> Refused:
        return Refused(503, f"the server is receiving its limit of {self.limits.max_inflight_upload_bytes} bytes of "
                            "uploads at once; retry later", RETRY_AFTER_S)

    async def read(self, receive: Any, declared: int | None, held: Reservation) -> bytearray:
        """The whole body within the deadline and the limits (a chunked body reserves as it comes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.read_timeout_s
        limit = self.limits.max_upload_bytes
        body = bytearray()
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                raise Refused(408, f"the request body did not arrive within {self.limits.read_timeout_s:g} s "
                                   f"({len(body)} of {declared if declared is not None else 'its'} bytes came)") \
                    from None
            if message["type"] == "http.disconnect":
                raise _Aborted
            chunk = message.get("body", b"")
            size = len(body) + len(chunk)
            if size > limit:
                raise Refused(413, f"the request body is over the limit of {limit} bytes")
            if declared is None and size > held.n and not held.take(size - held.n):
                raise self.busy()
            body += chunk
            if not message.get("more_body", False):
                return body

    async def refuse(self, send: Any, e: Refused) -> None:
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        if e.retry_after is not None:
            headers.append((b"retry-after", str(e.retry_after).encode()))
        await send({"type": "http.response.start", "status": e.status, "headers": headers})
        await send({"type": "http.response.body", "body": error_body(e.status, str(e), "body")})


class _Aborted(Exception):
    """The client closed the connection before its body was complete."""


def deadline_protocol(read_timeout_s: float, on_timeout: Callable[[], None]) -> type:
    """uvicorn's h11 protocol with a deadline on each request's headers: ``read_timeout_s`` from the
    connection or from the first byte after the previous answer; then a 408 (JSON) and the connection is
    closed. The deadline is disarmed when the application is called (the headers are complete); the body's
    deadline is ``Intake``'s."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    message = f"the request headers did not arrive within {read_timeout_s:g} s"
    body = error_body(408, message)
    raw = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
           b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    class DeadlineProtocol(H11Protocol):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.headers_deadline: asyncio.TimerHandle | None = None
            inner = self.app

            async def app(scope: Any, receive: Any, send: Any) -> None:
                self.disarm()  # the headers are complete
                await inner(scope, receive, send)

            self.app = app

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            waiting = self.cycle is None or self.cycle.response_complete  # for the headers of a new request
            if waiting and self.headers_deadline is None and not self.transport.is_closing():
                self.arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

        def arm(self) -> None:
            self.headers_deadline = self.loop.call_later(read_timeout_s, self.expired)

        def disarm(self) -> None:
            if self.headers_deadline is not None:
                self.headers_deadline.cancel()
                self.headers_deadline = None

        def expired(self) -> None:
            self.headers_deadline = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return  # closed, or a request got its headers in the meantime (its body has Intake's deadline)
            on_timeout()
            self.transport.write(raw)
            self.transport.close()

    return DeadlineProtocol


def return_freed_memory(threshold: int = 128 << 10) -> bool:
    """Make glibc serve every allocation of ``threshold`` bytes or more with its own memory map, returned to
    the system when freed. By default glibc raises that threshold each time such a block is freed (up to 32
    MiB), after which request bodies come from the heap, which fragments and does not shrink: measured, the
    memory of 100 stalled 4 MiB uploads stayed after the clients left. ``mallopt(M_MMAP_THRESHOLD)`` fixes it
    (and stops the raising). False where the C library is not glibc (nothing changes)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> Any:
    """The uvicorn settings ``vqdeploy serve`` runs ``app`` (``create_app``'s) with: the h11 protocol with the
    headers deadline of the app's ``--read-timeout``, quiet logs."""
    import uvicorn

    server = app.server
    http = deadline_protocol(server.config.read_timeout_s, server.header_timeout)
    return uvicorn.Config(app, host=host, port=port, http=http, log_level="warning", lifespan="on", **kwargs)
