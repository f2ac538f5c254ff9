"""Prometheus metrics of one server (its own registry, so that several apps in one process, e.g. in
tests, do not collide)."""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("vqdeploy_requests", "HTTP requests answered", ["endpoint", "code"], registry=r)
        self.rejected = Counter("vqdeploy_rejected", "Generate requests not served: queue_full, timeout, "
                                                     "disconnected", ["reason"], registry=r)
        self.queue_jobs = Gauge("vqdeploy_queue_depth", "Requests waiting for the engine", registry=r)
        self.queue_rows = Gauge("vqdeploy_queue_samples", "Samples waiting for the engine", registry=r)
        self.batch_samples = Histogram("vqdeploy_batch_samples", "Samples (rows) per engine batch",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("vqdeploy_batch_requests", "Requests sharing an engine batch",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("vqdeploy_batch_seconds", "Engine batch duration", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.tokens = Counter("vqdeploy_tokens", "Image tokens sampled", registry=r)
        self.images = Counter("vqdeploy_images", "Images generated", registry=r)
        self.tokens_per_s = Gauge("vqdeploy_tokens_per_second", "Tokens/s of the last batch (sampling only)",
                                  registry=r)
        self.latency = Histogram("vqdeploy_request_latency_seconds", "Generate request latency, arrival to answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("vqdeploy_queue_wait_seconds", "Time from arrival to the start of the batch",
                                    buckets=LATENCY_BUCKETS, registry=r)

    def batch(self, rows: float, requests: int, tokens: int, timings: dict[str, Any]) -> None:
        self.batch_samples.observe(rows)
        self.batch_requests.observe(requests)
        self.tokens.inc(tokens)
        if "batch" in timings:
            self.batch_seconds.observe(timings["batch"])
        if timings.get("sampling"):
            self.tokens_per_s.set(tokens / timings["sampling"])

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
