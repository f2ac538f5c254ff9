"""Helpers of the serve tests: a uvicorn server on a free loopback port in a thread, and requests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SKETCHES = sorted((ROOT / "models" / "demo" / "sketches").glob("*.png"))


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1, a port the OS picks, with ``vqdeploy serve``'s uvicorn settings (the
    protocol with the headers deadline); yields the base URL."""
    import uvicorn

    from vqdeploy.serve.intake import uvicorn_config

    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def sketch_bytes(i: int = 0) -> bytes:
    return SKETCHES[i].read_bytes()


def decode_png(b64: str) -> Any:
    import base64
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))
