"""The builder's log and progress.

The full TensorRT log goes to ``engines/build.log`` (a long build says a lot); the console gets
one line per engine and, for long builds, a throttled progress line from TensorRT's
IProgressMonitor (phase, step / steps). Errors are kept to explain a failed build.

``build.log`` holds the log of the last build-trt run that built something, ``build.prev.log``
the one before (rotation). The log is a file this run creates (``O_EXCL`` temp file renamed into
place when the first line is written, then written through its own descriptor, so it can be
followed live): an existing path is never opened for writing, and only a regular file at either
name is replaced (``check_target``: a symlink, FIFO or device planted there is refused).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol, SupportsInt

from vqdeploy.errors import ArtifactError, os_error
from vqdeploy.files import check_target, default_mode
from vqdeploy.trt.shim import trt

Echo = Callable[[str], None]
LOG = "build.log"
PREVIOUS_LOG = "build.prev.log"


class Sink(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class Discard:
    """A sink that keeps nothing (the runtime's messages are folded into its errors)."""

    def write(self, text: str, /) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class LogFile:
    """``<directory>/build.log`` for this run, created on the first write (a run that only reuses
    cached engines keeps the previous log); the previous log becomes ``build.prev.log``."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOG
        self.previous = directory / PREVIOUS_LOG
        for p in (self.path, self.previous):  # fail before the build, not at its first line
            if os.path.isdir(p) and not os.path.islink(p):
                raise ArtifactError(f"{p}: is a directory; vqdeploy writes its build log there")
            check_target(p, "build-trt", error=ArtifactError)
        self.stream: IO[str] | None = None

    def _open(self) -> IO[str]:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{LOG}.", suffix=".tmp", dir=self.path.parent)
        except OSError as e:
            raise os_error(e, self.path, "write") from None
        stream = os.fdopen(fd, "w")
        try:
            os.fchmod(fd, default_mode())
            check_target(self.previous, "build-trt", error=ArtifactError)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(self.path).st_mode):  # anything else was refused by check_target
                    os.replace(self.path, self.previous)
            check_target(self.path, "build-trt", error=ArtifactError)
            os.replace(tmp, self.path)
        except (OSError, ArtifactError) as e:
            stream.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, ArtifactError):
                raise
            raise ArtifactError(f"{self.path}: cannot install the build log ({e.strerror})") from None
        return stream

    def write(self, text: str, /) -> int:
        if self.stream is None:
            self.stream = self._open()
        try:
            return self.stream.write(text)
        except OSError as e:
            raise os_error(e, self.path, "write") from None

    def flush(self) -> None:
        if self.stream is not None:
            try:
                self.stream.flush()
            except OSError as e:
                raise os_error(e, self.path, "write") from None

    def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            try:
                stream.close()
            except OSError as e:
                raise os_error(e, self.path, "write") from None


def last_error(errors: list[str]) -> str:
    """The last TensorRT error as one short line, for an error message."""
    lines = errors[-1].strip().splitlines() if errors else []
    return lines[0][:200] if lines else "no error message"


class BuildLog:
    """A TensorRT ILogger writing to a sink; counts warnings and keeps errors. ``level``:
    "verbose", "info" (the build log), "warning" or "error" (the runtime)."""

    def __init__(self, stream: Sink, level: str = "info") -> None:
        self.stream = stream
        self.warnings = 0
        self.errors: list[str] = []
        self.interrupted = False  # Ctrl-C arrived inside a TensorRT callback: the build is cancelled
        self.failure: BaseException | None = None  # or writing the log failed there (a full disk): reported after
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
    limit = {"verbose": Severity.VERBOSE, "info": Severity.INFO, "warning": Severity.WARNING,
             "error": Severity.ERROR}[level]

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            try:
                if severity <= Severity.ERROR:
                    log.errors.append(msg)
                    del log.errors[:-16]  # the last ones explain a failure; a long run keeps no more
                elif severity == Severity.WARNING and "Int64 binding" not in msg:  # that one is expected: our ids are int64
                    log.warnings += 1
                if severity <= limit:
                    log.write(f"[{severity.name[0]}] {msg}")
            except (OSError, ArtifactError) as e:  # the log cannot be written (a full disk): cancel, then say why
                log.failure = log.failure or e
                log.interrupted = True
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
