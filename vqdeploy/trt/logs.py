"""The builder's log and progress.

The full TensorRT log goes to ``engines/build.log`` (a long build says a lot); the console gets
one line per engine and, for long builds, a throttled progress line from TensorRT's
IProgressMonitor (phase, step / steps). Errors are kept to explain a failed build.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, SupportsInt

from vqdeploy.trt.shim import trt

Echo = Callable[[str], None]


class BuildLog:
    """A TensorRT ILogger writing to an open file; counts warnings and keeps errors.
    ``level``: "verbose", "info" (the build log) or "warning" (the runtime, on stderr)."""

    def __init__(self, stream: IO[str], level: str = "info") -> None:
        self.stream = stream
        self.warnings = 0
        self.errors: list[str] = []
        self.interrupted = False  # Ctrl-C arrived inside a TensorRT callback: the build is cancelled
        self.logger = _make_logger(self, level)

    def write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def section(self, title: str) -> None:
        self.write(f"\n===== {title} ({time.strftime('%Y-%m-%d %H:%M:%S')}) =====")
        self.warnings, self.errors = 0, []


def _make_logger(log: BuildLog, level: str) -> trt.ILogger:
    # the base class is TensorRT's: defined here so that importing this module does not import TensorRT
    Severity = trt.ILogger.Severity
    limit = {"verbose": Severity.VERBOSE, "info": Severity.INFO, "warning": Severity.WARNING}[level]

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            try:
                if severity <= Severity.ERROR:
                    log.errors.append(msg)
                elif severity == Severity.WARNING and "Int64 binding" not in msg:  # that one is expected: our ids are int64
                    log.warnings += 1
                if severity <= limit:
                    log.write(f"[{severity.name[0]}] {msg}")
            except BaseException:  # noqa: BLE001  never raise into C++ (KeyboardInterrupt): cancel at the next step
                log.interrupted = True

    return Logger()


def make_progress(log: BuildLog, label: str, echo: Echo, every_s: float = 10.0) -> trt.IProgressMonitor:
    """An IProgressMonitor: every phase to the log; to the console, the innermost running phase at
    most every ``every_s`` seconds. Ctrl-C during the build cancels it cleanly (``log.interrupted``)."""

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.phases: dict[str, tuple[int, int]] = {}  # name -> (step, steps), in start order
            self.t0 = self.last = time.monotonic()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: SupportsInt) -> None:
            self.phases[phase_name] = (0, int(num_steps))
            log.write(f"[progress] {'  ' * (len(self.phases) - 1)}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: SupportsInt) -> bool:
            try:
                n = self.phases.get(phase_name, (0, 0))[1]
                self.phases[phase_name] = (int(step) + 1, n)
                now = time.monotonic()
                if now - self.last >= every_s:
                    self.last = now
                    inner = next(reversed(self.phases))
                    done, total = self.phases[inner]
                    echo(f"      {label}: {inner} {done}/{total} ({now - self.t0:.0f} s)")
            except BaseException:  # noqa: BLE001  KeyboardInterrupt inside a callback from C++: cancel the build
                log.interrupted = True
            return not log.interrupted

        def phase_finish(self, phase_name: str) -> None:
            self.phases.pop(phase_name, None)

    return Progress()
