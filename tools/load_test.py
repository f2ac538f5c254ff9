"""Load test of ``vqdeploy serve`` on loopback, bounded in time, against the same work done by
``vqdeploy run`` one process per request.

Starts ``vqdeploy serve`` on a free 127.0.0.1 port (or uses --url), once per --batching mode, then runs every
load level against it:
- closed loop (--clients): that many clients, each sending one request after the other (a different seed each)
  for --duration seconds;
- open loop (--rates): requests arrive as a Poisson process of that many requests per second for --duration
  seconds, each sent at its arrival whatever the server is doing; latency counts from the arrival.
Requests started before the deadline are waited for (bounded by the server's timeout). Reports images/s,
tokens/s, p50/p95/p99 latency, mean engine batch, rejected (429) and failed requests; then times
--baseline-runs sequential ``vqdeploy run`` processes of one request each.

    python tools/load_test.py --artifacts artifacts/demo --clients 1,4,16 --duration 20 --out load.json
    python tools/load_test.py --artifacts artifacts/demo --clients "" --rates 5,10 --batching continuous,request

Needs the serve extra and httpx (the HTTP client): pip install -e ".[serve]" httpx (the test extra has both).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

try:
    import httpx
except ImportError:
    sys.exit('tools/load_test.py needs httpx (its HTTP client) and the serve extra: pip install -e ".[serve]" httpx')

ROOT = Path(__file__).resolve().parent.parent
SKETCH = ROOT / "models" / "demo" / "sketches" / "07_house-square-circle_horizon.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, batching: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "vqdeploy", "serve", "--artifacts", str(args.artifacts), "--backend", args.backend,
           "--port", str(port), "--max-queue", str(args.max_queue), "--max-wait-ms", str(args.max_wait_ms),
           "--timeout", str(args.timeout), "--batching", batching]
    if args.max_batch:
        cmd += ["--max-batch", str(args.max_batch)]
    cpus = {int(c) for c in args.server_cpus.split(",")} if args.server_cpus else None
    # pinning the server (as a container's cpuset would) also sets ONNX Runtime's thread count to those cores
    proc = subprocess.Popen(cmd, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(url + "/healthz", timeout=2).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)


def request_parts(model: dict, condition: bytes | None, seed: int, num_samples: int) -> dict:
    data = {"seed": str(seed), "num_samples": str(num_samples)}
    kind = model["model"]["conditioning"]["kind"]
    if kind == "class":
        data["class_id"] = "0"
    files = {"condition": ("c.png", condition, "image/png")} if condition is not None else None
    return {"data": data, "files": files}


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the server's batch size histogram."""
    total = count = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("vqdeploy_batch_samples_sum "):
            total = float(line.split()[-1])
        elif line.startswith("vqdeploy_batch_samples_count "):
            count = float(line.split()[-1])
    return total, count


def level(url: str, model: dict, condition: bytes | None, clients: int, duration: float, num_samples: int,
          seed0: int, rate: float | None = None) -> dict:
    """``clients`` closed-loop clients for ``duration`` seconds, or (``rate``) Poisson arrivals at ``rate``
    requests per second for ``duration`` seconds, each request on its own thread."""
    steps = int(model["model"]["tokens"]["steps"])
    latencies: list[float] = []
    counts = {"ok": 0, "rejected": 0, "failed": 0}
    lock = threading.Lock()
    seeds = iter(range(seed0, seed0 + 10**9))
    start = time.perf_counter()
    deadline = start + duration

    def send(http: httpx.Client, since: float) -> None:
        with lock:
            seed = next(seeds)
        try:
            r = http.post(url + "/v1/generate", **request_parts(model, condition, seed, num_samples))
            status = r.status_code
            ok = status == 200 and len(r.json()["images"]) == num_samples
        except httpx.HTTPError:
            status, ok = 0, False
        with lock:
            if ok:
                counts["ok"] += 1
                latencies.append(time.perf_counter() - since)
            elif status == 429:
                counts["rejected"] += 1
            else:
                counts["failed"] += 1
        if status == 429 and rate is None:
            time.sleep(0.05)

    def client() -> None:
        with httpx.Client(timeout=None) as http:  # the server's --timeout bounds every request
            while time.perf_counter() < deadline:
                send(http, time.perf_counter())

    before = batch_stats(url)
    threads = []
    if rate is None:
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for th in threads:
            th.start()
    else:  # open loop: one thread per request, sent at its arrival time
        arrivals = random.Random(seed0)
        pool = httpx.Client(timeout=None, limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        at = start
        while True:
            at += arrivals.expovariate(rate)
            if at >= deadline:
                break
            time.sleep(max(0.0, at - time.perf_counter()))
            th = threading.Thread(target=send, args=(pool, at))
            th.start()
            threads.append(th)
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    after = batch_stats(url)
    lat = sorted(latencies)
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None  # noqa: E731
    images = counts["ok"] * num_samples
    batches = after[1] - before[1]
    return {"clients": clients if rate is None else None, "rate": rate, "seconds": round(wall, 2),
            "requests": counts["ok"], "images": images,
            "images_per_s": round(images / wall, 2), "tokens_per_s": round(images * steps / wall, 1),
            "p50_s": pct(0.50), "p95_s": pct(0.95), "p99_s": pct(0.99),
            "mean_batch": round((after[0] - before[0]) / batches, 2) if batches else None,
            "rejected": counts["rejected"], "failed": counts["failed"]}


def baseline(args: argparse.Namespace, condition_path: Path | None, steps: int) -> dict:
    """``vqdeploy run`` one process per request, one after the other (process start + model load each)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for k in range(args.baseline_runs):
            cmd = [sys.executable, "-m", "vqdeploy", "run", *([str(condition_path)] if condition_path else []),
                   "--artifacts", str(args.artifacts), "--backend", args.backend, "--seed", str(k),
                   "--num-samples", str(args.num_samples), "--out", str(Path(tmp) / f"s{k}.png")]
            subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - start
    images = args.baseline_runs * args.num_samples
    return {"runs": args.baseline_runs, "seconds": round(wall, 2), "images_per_s": round(images / wall, 2),
            "tokens_per_s": round(images * steps / wall, 1), "seconds_per_run": round(wall / args.baseline_runs, 2)}


def engine_breakdown(args: argparse.Namespace, condition_path: Path | None, sizes: list[int]) -> list[dict]:
    """Per-image stage times of one engine batch of each size, in this process (no HTTP): what batching can
    save at most on this machine (pin with taskset to compare with a pinned server)."""
    from vqdeploy.runtime.pipeline import Pipeline
    from vqdeploy.serve.requests import parse_fields, read_condition
    from vqdeploy.serve.runner import BatchRunner, Item, Job

    engine = BatchRunner(Pipeline.from_artifacts(args.artifacts, args.backend).generator)
    info = engine.info
    data = condition_path.read_bytes() if condition_path else None
    rows = []
    for n in sizes:
        if n > engine.max_batch:
            print(f"engine batch {n}: over these artifacts' batch limit {engine.max_batch} (export --max-batch)",
                  file=sys.stderr)
            continue
        best: dict[str, float] = {}
        for _ in range(3):  # the fastest of three (the first also warms up)
            items = []
            for k in range(n):
                req = parse_fields({"seed": str(k), **({"class_id": "0"} if info.condition.classes
                                                       else {})}, info, 1)
                read_condition(data, req, info)
                items.append(Item(Job(req), 0, 1))
            t = engine.run(items)
            if not best or sum(t.values()) < sum(best.values()):
                best = t
        rows.append({"batch": n, **{f"{k}_ms_per_image": round(1000 * v / n, 1) for k, v in best.items()},
                     "total_ms_per_image": round(1000 * sum(best.values()) / n, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def markdown(result: dict) -> str:
    rows = ["| batching | load | images/s | tokens/s | p50 latency (s) | p95 latency (s) | p99 latency (s) | mean batch "
            "| requests | rejected | failed |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["levels"]:
        load = f"{r['clients']} clients" if r["rate"] is None else f"Poisson {r['rate']}/s"
        rows.append(f"| {r['batching']} | {load} | {r['images_per_s']} | {r['tokens_per_s']} | {r['p50_s']} | "
                    f"{r['p95_s']} | {r['p99_s']} | {r['mean_batch']} | {r['requests']} | {r['rejected']} | "
                    f"{r['failed']} |")
    b = result.get("baseline")
    if b:
        rows.append(f"| `vqdeploy run` x{b['runs']}, sequential | | {b['images_per_s']} | {b['tokens_per_s']} | "
                    f"{b['seconds_per_run']} | | | 1 | {b['runs']} | | |")
    if result.get("engine"):
        rows += ["", "| engine batch | cond encoder ms/image | sampling ms/image | decoder ms/image | total ms/image |",
                 "|---:|---:|---:|---:|---:|"]
        for e in result["engine"]:
            rows.append(f"| {e['batch']} | {e['cond_encoder_ms_per_image']} | {e['sampling_ms_per_image']} | "
                        f"{e['decoder_ms_per_image']} | {e['total_ms_per_image']} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, required=True, help="Artifacts directory (vqdeploy export).")
    ap.add_argument("--url", default=None, help="A running server to test instead of starting one (loopback only).")
    ap.add_argument("--backend", default="onnxruntime", help="Backend of the server and of the baseline runs.")
    ap.add_argument("--clients", default="1,4,16", help="Comma list of closed-loop concurrency levels ('' for none).")
    ap.add_argument("--rates", default="", help="Comma list of Poisson arrival rates, requests per second.")
    ap.add_argument("--batching", default="continuous", help="Comma list of server --batching modes, each tested "
                                                              "with every level (continuous, request).")
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds per level (requests then finish).")
    ap.add_argument("--num-samples", type=int, default=1, help="num_samples of every request.")
    ap.add_argument("--baseline-runs", type=int, default=5, help="Sequential `vqdeploy run` processes (0: none).")
    ap.add_argument("--condition", type=Path, default=None, help="Condition image (default: a demo sketch for "
                                                                 "sketch models; needed for label-map models).")
    ap.add_argument("--max-batch", type=int, default=None, help="Server --max-batch.")
    ap.add_argument("--max-queue", type=int, default=64, help="Server --max-queue.")
    ap.add_argument("--max-wait-ms", type=float, default=20.0, help="Server --max-wait-ms.")
    ap.add_argument("--engine-batches", default="1,8", help="Also time engine batches of these sizes in this "
                                                             "process, pinned like the server ('' for none).")
    ap.add_argument("--server-cpus", default=None, help="Pin the server to these CPUs (comma list), e.g. 1.")
    ap.add_argument("--timeout", type=float, default=120.0, help="Server --timeout (large models need more).")
    ap.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = ap.parse_args()
    if args.url is not None and not args.url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        raise SystemExit("--url must be a loopback address")
    loads = [(int(c), None) for c in args.clients.split(",") if c] + [(0, float(r)) for r in args.rates.split(",") if r]
    levels = []
    for batching in args.batching.split(",") if args.url is None else ["(running server)"]:
        proc, url = (None, args.url) if args.url is not None else start_server(args, batching)
        try:
            model = httpx.get(url + "/v1/model", timeout=10).json()
            kind = model["model"]["conditioning"]["kind"]
            cond_path = args.condition or (SKETCH if kind in ("image", "first_stage") else None)
            condition = cond_path.read_bytes() if cond_path else None
            for seed in range(2):  # warm-up: sessions created, first allocations done
                httpx.post(url + "/v1/generate", timeout=300, **request_parts(model, condition, 10**6 + seed, 1))
            for i, (c, rate) in enumerate(loads):
                levels.append({"batching": batching, **level(url, model, condition, c, args.duration,
                                                              args.num_samples, seed0=i * 10**6, rate=rate)})
                print(json.dumps(levels[-1]), file=sys.stderr)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    steps = int(model["model"]["tokens"]["steps"])
    result = {"artifacts": str(args.artifacts), "backend": args.backend, "num_samples": args.num_samples,
              "cpus": os.cpu_count(), "server_cpus": args.server_cpus, "load_average": os.getloadavg(),
              "levels": levels}
    if args.baseline_runs:
        result["baseline"] = baseline(args, cond_path, steps)
    if args.engine_batches:
        if args.server_cpus:
            os.sched_setaffinity(0, {int(c) for c in args.server_cpus.split(",")})
        result["engine"] = engine_breakdown(args, cond_path, [int(v) for v in args.engine_batches.split(",")])
    one = levels[0]["images_per_s"] if levels and levels[0]["clients"] == 1 and len(args.batching.split(",")) == 1 \
        else None
    if one:
        result["speedup_vs_1_client"] = {str(r["clients"]): round(r["images_per_s"] / one, 2) for r in levels}
    print(markdown(result))
    if "speedup_vs_1_client" in result:
        print("images/s relative to 1 client:", result["speedup_vs_1_client"])
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
