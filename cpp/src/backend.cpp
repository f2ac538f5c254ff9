// Choosing a backend and its device (vqdeploy/runtime/backends/select.py and devices.py), and the
// graph files checked against the manifest before any runtime opens one.
#include "backend.hpp"

#include <dlfcn.h>
#include <sys/stat.h>

#include "artifacts.hpp"
#include "vqdeploy/error.hpp"

namespace vqdeploy {

bool ort_has_cuda_provider();

bool gpu_present() {
  static const bool present = [] {
    for (const char* name : {"libcuda.so.1", "libcuda.so"}) {
      void* lib = ::dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (!lib) continue;
      using Init = int (*)(unsigned);
      using Count = int (*)(int*);
      auto init = reinterpret_cast<Init>(::dlsym(lib, "cuInit"));
      auto count_fn = reinterpret_cast<Count>(::dlsym(lib, "cuDeviceGetCount"));
      int count = 0;
      return init && count_fn && init(0) == 0 && count_fn(&count) == 0 && count > 0;
    }
    return false;
  }();
  return present;
}

namespace {

void announce(const BackendOptions& o, const std::string& backend, const std::string& device, const std::string& why) {
  if (o.log) o.log("backend " + backend + " on " + device + (why.empty() ? "" : " (" + why + ")"));
}

}  // namespace

std::unique_ptr<Backend> open_backend(const Manifest& m, const BackendOptions& o) {
  std::string name = o.backend;
  if (name != "auto" && name != "onnxruntime" && name != "tensorrt") {
    if (name == "torch") backend_error("the torch backend is Python's (vqdeploy run --backend torch); vqdeploy-cpp runs onnxruntime or tensorrt");
    backend_error("unknown backend '" + name + "' (auto, onnxruntime, tensorrt)");
  }
  if (!o.device.empty() && o.device != "cpu" && o.device != "cuda")
    backend_error("--device " + o.device + ": expected cpu or cuda");
  if (name == "auto") {  // TensorRT when engines and a GPU are there, else ONNX Runtime
    struct stat st {};
    bool engines = ::lstat(join_path(join_path(m.directory, "engines"), "engines.json").c_str(), &st) == 0;
#ifdef VQDEPLOY_WITH_TENSORRT
    name = (o.device.empty() || o.device == "cuda") && engines && gpu_present() ? "tensorrt" : "onnxruntime";
#else
    (void)engines;
    name = "onnxruntime";
#endif
  }
  const std::string flag = o.device.empty() ? "" : "--device " + o.device + ": ";
  if (name == "tensorrt") {
#ifdef VQDEPLOY_WITH_TENSORRT
    if (o.device == "cpu") backend_error("--device cpu: the tensorrt backend runs on a CUDA GPU only");
    if (!gpu_present()) backend_error(flag + "the tensorrt backend needs a CUDA GPU; none is available here");
    if (o.device.empty()) announce(o, name, "cuda", "");
    return open_tensorrt(m, o.cuda_graphs);
#else
    backend_error("the tensorrt backend is not in this vqdeploy-cpp (built without TensorRT: cmake -DVQDEPLOY_WITH_TENSORRT=ON)");
#endif
  }
  // onnxruntime
  std::string device = o.device, why;
  const bool gpu = gpu_present();
#ifdef VQDEPLOY_WITH_CUDA
  const bool provider = gpu && ort_has_cuda_provider();
#else
  const bool provider = false;
#endif
  if (device == "cuda") {
    if (!gpu) backend_error("--device cuda: no CUDA device is available here");
#ifndef VQDEPLOY_WITH_CUDA
    backend_error("--device cuda: this vqdeploy-cpp was built without CUDA (cmake -DVQDEPLOY_WITH_TENSORRT=ON brings it)");
#endif
    if (!provider) backend_error("--device cuda: onnxruntime has no CUDA provider here (link an onnxruntime GPU build)");
  } else if (device.empty()) {
    device = provider ? "cuda" : "cpu";
    if (gpu && !provider) why = "no CUDAExecutionProvider in this onnxruntime build";
    if (gpu) announce(o, name, device, why);
  }
  if (o.cuda_graphs && device != "cuda") backend_error("--cuda-graphs needs a CUDA device; onnxruntime runs on the CPU here");
  if (o.cuda_graphs) backend_error("--cuda-graphs: vqdeploy-cpp captures CUDA graphs with TensorRT only (--backend tensorrt)");
  return open_onnxruntime(m, device, false);
}

}  // namespace vqdeploy
