"""The command line's commands, thin over the library (one module each). Heavy optional dependencies
(torch for export/inspect/parity, TensorRT for build-trt, the serve extra) are imported when a command runs,
so ``vqdeploy --help`` and ``vqdeploy run`` stay fast and torch-free."""

from vqdeploy.commands.bench import bench
from vqdeploy.commands.build_trt import build_trt
from vqdeploy.commands.export import export
from vqdeploy.commands.inspect import inspect
from vqdeploy.commands.parity import parity
from vqdeploy.commands.run import run
from vqdeploy.commands.serve import serve

COMMANDS = (inspect, export, run, parity, bench, build_trt, serve)

__all__ = ["COMMANDS", "bench", "build_trt", "export", "inspect", "parity", "run", "serve"]
