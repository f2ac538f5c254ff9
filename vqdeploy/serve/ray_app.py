"""The same application on Ray Serve: N replicas, each holding one backend and its own batcher, behind
Ray's HTTP proxy. The path when one machine (or one GPU) is not enough:

    serve run vqdeploy.serve.ray_app:build artifacts=artifacts/demo num_replicas=2      # needs .[ray]

or from Python ``serve.run(deployment("artifacts/demo", num_replicas=2))``. On a cluster every node
needs vqdeploy and the artifacts at the same path (or a shared file system). Ray's proxy spreads the
requests over the replicas; batching happens inside each replica (``Batcher``), so a replica's engine
batches are as large as the requests routed to it allow.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ray import serve

from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.serve.app import ServeConfig, create_app


@serve.deployment
@serve.ingress()
class VQDeployReplica:
    """One replica: one pipeline on one backend (one GPU where ``ray_actor_options`` asks for it)."""

    def __init__(self, artifacts: str, backend: str = "auto", device: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.artifacts, self.backend, self.device = artifacts, backend, device
        self.config = ServeConfig(**(config or {}))

    def __serve_build_asgi_app__(self) -> Any:
        """Called by Ray after ``__init__`` on the replica: the app of ``vqdeploy serve``."""
        return create_app(Pipeline.from_artifacts(self.artifacts, self.backend, self.device), self.config)


def deployment(artifacts: str, backend: str = "auto", device: str | None = None, num_replicas: int = 2,
               num_cpus: float = 1.0, num_gpus: float = 0.0, config: ServeConfig | None = None) -> Any:
    """The bound application: ``num_replicas`` replicas of the model in ``artifacts``; ``num_gpus=1``
    gives each replica a GPU of its own."""
    options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    return VQDeployReplica.options(num_replicas=num_replicas, ray_actor_options=options).bind(
        str(artifacts), backend, device, asdict(config or ServeConfig()))


def build(args: dict[str, str]) -> Any:
    """Application builder for ``serve run vqdeploy.serve.ray_app:build artifacts=DIR [num_replicas=2]
    [backend=auto] [device=cuda] [num_cpus=1] [num_gpus=0] [max_batch=N] [max_queue=N]``."""
    known = {"artifacts", "backend", "device", "num_replicas", "num_cpus", "num_gpus", "max_batch", "max_queue"}
    unknown = sorted(set(args) - known)
    if unknown or "artifacts" not in args:
        raise ValueError(f"expected artifacts=DIR and optionally {', '.join(sorted(known - {'artifacts'}))}; "
                         f"got {', '.join(unknown) or 'no artifacts'}")
    config = ServeConfig()
    if "max_batch" in args:
        config.max_batch = int(args["max_batch"])
    if "max_queue" in args:
        config.max_queue = int(args["max_queue"])
    return deployment(args["artifacts"], args.get("backend", "auto"), args.get("device"),
                      int(args.get("num_replicas", 2)), float(args.get("num_cpus", 1)), float(args.get("num_gpus", 0)),
                      config)
