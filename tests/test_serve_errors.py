"""`vqdeploy serve` with hostile or wrong input: a 4xx JSON error naming the field, the server keeps
serving, nothing is written to disk; a full queue answers 429 with Retry-After, a slow request 504, and
a client that goes away frees its place."""

from __future__ import annotations

import io
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402
from serve_support import running, sketch_bytes  # noqa: E402

from vqdeploy.runtime.pipeline import Pipeline  # noqa: E402
from vqdeploy.serve.app import ServeConfig, create_app  # noqa: E402


def png(mode: str, size: tuple[int, int], value: int | tuple = 255) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG" if mode != "CMYK" else "JPEG")
    return buf.getvalue()


def noise_png(nbytes: int) -> bytes:
    """A valid PNG of about ``nbytes`` bytes (random pixels do not compress), within the pixel budget."""
    side = int((nbytes / 3) ** 0.5) + 1
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def spool_dir(tmp_path_factory) -> Path:
    """Every temporary file of the process goes here while the module runs: it must stay empty."""
    d = tmp_path_factory.mktemp("spool")
    old = tempfile.tempdir
    tempfile.tempdir = str(d)
    yield d
    tempfile.tempdir = old


@pytest.fixture(scope="module")
def pipeline(demo_export: Path) -> Pipeline:
    return Pipeline.from_artifacts(demo_export, "onnxruntime")


@pytest.fixture(scope="module")
def url(pipeline, spool_dir):
    config = ServeConfig(max_upload_bytes=3 * 2**20, max_pixels=1024 * 1024, max_samples=8)
    with running(create_app(pipeline, config)) as base:
        yield base


SKETCH = ("s.png", None, "image/png")

BAD = [  # (fields, condition bytes or None for the demo sketch, status, field)
    ({"foo": "1"}, None, 400, "foo"),
    ({"seed": "-1"}, None, 400, "seed"),
    ({"seed": str(2**63)}, None, 400, "seed"),
    ({"seed": "abc"}, None, 400, "seed"),
    ({"num_samples": "0"}, None, 400, "num_samples"),
    ({"num_samples": "9"}, None, 400, "num_samples"),
    ({"temperature": "nan"}, None, 400, "temperature"),
    ({"temperature": "-1"}, None, 400, "temperature"),
    ({"top_k": "0"}, None, 400, "top_k"),
    ({"top_k": "1.5"}, None, 400, "top_k"),
    ({"top_p": "0"}, None, 400, "top_p"),
    ({"top_p": "1.5"}, None, 400, "top_p"),
    ({"class_id": "3"}, None, 400, "class_id"),
    ({"partial_every": "-2"}, None, 400, "partial_every"),
    ({}, b"", 400, "condition"),  # an image model without its condition
    ({}, b"not an image at all", 400, "condition"),
    ({}, png("RGB", (64, 64))[:60], 400, "condition"),  # truncated
    ({}, png("CMYK", (64, 64), (0, 0, 0, 0)), 415, "condition"),
    ({}, png("L", (3000, 2000)), 413, "condition"),  # over the condition budget (checked on the header)
]


@pytest.mark.parametrize("fields,condition,status,field", BAD, ids=[f"{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_bad_fields_get_a_4xx_naming_the_field(url, spool_dir, fields, condition, status, field):
    data = sketch_bytes(0) if condition is None else condition
    files = {"condition": ("s.png", data, "image/png")} if data else None
    r = httpx.post(f"{url}/v1/generate", files=files, data=fields or ({"seed": "0"} if not files else None),
                   timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["message"]
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_large_sketch_is_resized_as_run_resizes_it(url, tmp_path):
    """The same input rules as `vqdeploy run`: an 800x600 sketch is resized to the trained size, with run's note."""
    r = httpx.post(f"{url}/v1/generate", files={"condition": ("s.png", png("L", (800, 600)), "image/png")},
                   data={"seed": "1"}, timeout=120)
    assert r.status_code == 200, r.text
    assert any("800x600; resized to" in n for n in r.json()["notes"]), r.json()["notes"]


def test_body_errors(url):
    post = lambda **kw: httpx.post(f"{url}/v1/generate", timeout=60, **kw)  # noqa: E731
    cases = [
        (post(content=b"{bad", headers={"content-type": "application/json"}), 400, "body"),
        (post(json=[1, 2]), 400, "body"),
        (post(json={"seed": 1, "condition": 5}), 400, "condition"),
        (post(json={"seed": 1, "condition": "%%%"}), 400, "condition"),
        (post(json={"seed": True, "condition": ""}), 400, "seed"),
        (post(content=b"seed=1", headers={"content-type": "text/plain"}), 415, "body"),
        (post(content=b"seed=1&seed=2", headers={"content-type": "application/x-www-form-urlencoded"}), 400, "seed"),
        (post(content=b"seed=1&condition=abc", headers={"content-type": "application/x-www-form-urlencoded"}), 400,
         "condition"),
        (post(content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}), 400, None),
        (post(data={"seed": "1"}, files={"x": ("a", b"b")}), 400, "x"),
        (post(data={"seed": "1", "top_k": "1"}, files={"condition": ("s.png", sketch_bytes(0), "image/png"),
                                                          "seed": ("s", b"2")}), 400, None),
        (post(data={"condition": "text", "seed": "1"}), 400, "condition"),
    ]
    for r, status, field in cases:
        assert r.status_code == status, r.text
        if field is not None:
            assert r.json()["error"]["field"] == field, r.text
    r = post(content=b"x" * (3 * 2**20 + 1), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"


def test_not_found_and_wrong_method_are_json(url):
    r = httpx.get(f"{url}/nowhere")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{url}/v1/generate")
    assert r.status_code == 405 and "error" in r.json()


def test_large_upload_is_not_spooled_to_disk(url, spool_dir):
    data = noise_png(2 * 2**20)  # over Starlette's 1 MB spool threshold, under this server's body limit
    assert 1.5 * 2**20 < len(data) < 3 * 2**20
    r = httpx.post(f"{url}/v1/generate", files={"condition": ("big.png", data, "image/png")}, timeout=120)
    assert r.status_code == 200, r.text
    assert any("resized" in n for n in r.json()["notes"])
    assert list(spool_dir.iterdir()) == []


class Gate:
    """A batch runner stand-in that holds every batch until released (the queue fills up meanwhile)."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.max_batch = runner.max_batch
        self.key = runner.key
        self.open = threading.Event()
        self.entered = threading.Event()
        self.ran = 0

    def run(self, items):
        self.entered.set()
        self.open.wait(60)
        self.ran += sum(it.count for it in items)
        return self.runner.run(items)


def gate_prefills(batcher) -> Gate:
    """Continuous batching's stand-in: every admission (a sample's prefill) is held until released."""
    gate = Gate(batcher.runner)
    prefill = batcher._prefill

    def held(joining) -> None:
        gate.entered.set()
        gate.open.wait(60)
        gate.ran += len(joining)
        prefill(joining)

    batcher._prefill = held
    return gate


@pytest.fixture(params=["request", "continuous"])
def gated(pipeline, request):
    app = create_app(pipeline, ServeConfig(max_batch=1, max_wait_s=0.0, max_queue=2, request_timeout_s=1.5,
                                           batching=request.param))
    server = app.state.server
    if request.param == "request":
        gate = Gate(server.runner)
        server.batcher.runner = gate
    else:
        gate = gate_prefills(server.batcher)
    with running(app) as base:
        yield base, gate, server
        gate.open.set()


def send(base: str, results: list, **fields) -> threading.Thread:
    def go():
        try:
            results.append(httpx.post(f"{base}/v1/generate", data={k: str(v) for k, v in fields.items()},
                                      files={"condition": ("s.png", sketch_bytes(0), "image/png")}, timeout=60))
        except httpx.HTTPError as e:
            results.append(e)

    t = threading.Thread(target=go)
    t.start()
    return t


def wait_for(cond, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_full_queue_answers_429_with_retry_after_and_timeouts_504(gated):
    base, gate, server = gated
    results: list = []
    threads = [send(base, results, seed=0)]
    assert gate.entered.wait(30)  # the first request runs (held at the gate)
    threads += [send(base, results, seed=s) for s in (1, 2)]
    wait_for(lambda: server.batcher.waiting_jobs() == 2)
    r = httpx.post(f"{base}/v1/generate", files={"condition": ("s.png", sketch_bytes(0), "image/png")}, timeout=60)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["message"]
    for t in threads:
        t.join(60)
    assert sorted(r.status_code for r in results) == [504, 504, 504]  # the gate outlived the 1.5 s timeout
    gate.open.set()
    wait_for(lambda: server.batcher.waiting_jobs() == 0)
    assert gate.ran <= 2  # the timed-out requests still queued were dropped, not run
    text = httpx.get(f"{base}/metrics").text
    assert 'vqdeploy_rejected_total{reason="queue_full"} 1.0' in text
    assert 'vqdeploy_rejected_total{reason="timeout"} 3.0' in text
    ok = httpx.post(f"{base}/v1/generate", files={"condition": ("s.png", sketch_bytes(0), "image/png")}, timeout=60)
    assert ok.status_code == 200


def test_a_client_that_disconnects_frees_its_place(gated):
    base, gate, server = gated
    results: list = []
    first = send(base, results, seed=0)
    assert gate.entered.wait(30)
    # a raw client that queues a request and hangs up
    body = (b"--b\r\nContent-Disposition: form-data; name=\"seed\"\r\n\r\n7\r\n--b\r\nContent-Disposition: form-data; "
            b"name=\"condition\"; filename=\"s.png\"\r\nContent-Type: image/png\r\n\r\n" + sketch_bytes(0)
            + b"\r\n--b--\r\n")
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for(lambda: server.batcher.waiting_jobs() == 1)
    wait_for(lambda: 'reason="disconnected"' in httpx.get(f"{base}/metrics").text, timeout=10)
    gate.open.set()
    first.join(60)
    wait_for(lambda: server.batcher.waiting_jobs() == 0)
    assert gate.ran == 1  # only the first request ran: the one that hung up was dropped from the queue


def test_a_stream_that_is_closed_frees_its_place(gated):
    base, gate, server = gated
    results: list = []
    first = send(base, results, seed=0)
    assert gate.entered.wait(30)
    files = {"condition": ("s.png", sketch_bytes(0), "image/png")}
    with httpx.stream("POST", f"{base}/v1/generate/stream", files=files, data={"seed": "3"}, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines) == "event: queued"
        assert server.batcher.waiting_jobs() == 1
    wait_for(lambda: 'reason="disconnected"' in httpx.get(f"{base}/metrics").text, timeout=10)
    gate.open.set()
    first.join(60)
    wait_for(lambda: server.batcher.waiting_jobs() == 0)
    assert gate.ran == 1


def test_the_socket_listens_before_serving_is_announced() -> None:
    """`vqdeploy serve` prints "serving on ..." before uvicorn starts: a client that connects at once (a health
    probe, a script) must wait in the backlog, not be refused (seen in CI: Connection refused)."""
    from vqdeploy.commands.serve import listen

    sock = listen("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname()[:2], timeout=5):  # nobody accepts yet: queued, not refused
            pass
    finally:
        sock.close()
