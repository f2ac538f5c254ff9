"""TensorRT engines from the exported ONNX graphs: ``vqdeploy build-trt`` and the checks that
a runtime makes before it loads one.

One code path serves datacenter TensorRT (``tensorrt`` 10.x/11.x, builds for the GPU it runs
on) and TensorRT-RTX (``tensorrt_rtx_bindings``, builds ahead of time, also on a CPU-only
machine). Importing this package does not import TensorRT; ``shim.load()`` does, on first use.

Modules, one job each:
  shim      which TensorRT is installed (flavour, version), and a lazy ``trt`` module handle
  target    the compute capabilities / GPU an engine is built for
  profiles  optimization profiles (min/opt/max input shapes) from the manifest, with overrides
  network   ONNX -> strongly typed network; parser errors as one line; network I/O
  logs      builder log file (created, never appended to) and progress monitor
  builder   one serialized engine from one network
  record    engines.json (validated on read) and the cache key
  engines   the build of every graph (what ``build-trt`` runs)
  check     engines.json against the running TensorRT, GPU and manifest before loading
  command   the ``build-trt`` click command
"""
