// What a runtime (ONNX Runtime, TensorRT) provides to the shared loop: memory where its graphs
// read and write (host or device), and one executor per graph (and optimization profile) that
// runs the graph on tensors bound by address. Everything else (buffers, shapes from the manifest,
// the KV cache, the samplers) is written once over this, as GraphBackend in the Python package.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "vqdeploy/manifest.hpp"

namespace vqdeploy {

class Memory {
 public:
  virtual ~Memory() = default;
  virtual bool on_device() const = 0;
  virtual void* allocate(std::size_t bytes) = 0;  // zero-filled
  virtual void release(void* p) noexcept = 0;
  virtual void upload(void* dst, const void* src, std::size_t bytes) = 0;
  virtual void download(void* dst, const void* src, std::size_t bytes) = 0;  // waits for the device
  virtual void copy(void* dst, const void* src, std::size_t bytes) = 0;      // within this memory
};

// A buffer allocated once and freed with its owner.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Memory& m, std::size_t bytes) : memory_(&m), bytes_(bytes), ptr_(m.allocate(bytes ? bytes : 1)) {}
  ~Buffer() {
    if (ptr_) memory_->release(ptr_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : memory_(o.memory_), bytes_(o.bytes_), ptr_(o.ptr_) { o.ptr_ = nullptr; }
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(memory_, o.memory_);
    std::swap(bytes_, o.bytes_);
    std::swap(ptr_, o.ptr_);
    return *this;
  }
  void* get() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }

 private:
  Memory* memory_ = nullptr;
  std::size_t bytes_ = 0;
  void* ptr_ = nullptr;
};

// a tensor bound by address: the memory is the backend's
struct Binding {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  void* data;
};

class Executor {
 public:
  virtual ~Executor() = default;
  virtual void run(const std::vector<Binding>& inputs, const std::vector<Binding>& outputs) = 0;
};

class Backend {
 public:
  explicit Backend(const Manifest& m) : manifest_(m) {}
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual std::string device() const = 0;
  virtual Memory& memory() = 0;
  // the runner of ``graph`` fixed to ``profile`` ("" : the first; the transformer has "prefill" and "step")
  virtual Executor& executor(const std::string& graph, const std::string& profile = "") = 0;
  // the largest batch ``graph`` takes here (engines may narrow the exported range)
  virtual std::int64_t max_batch(const std::string& graph) { return manifest_.graph(graph).dims.at("batch").max; }
  // the step binds the same buffers at every position, its token copied out of one fixed buffer
  // (what a captured CUDA graph needs)
  virtual bool fixed_step_buffers() const { return false; }
  const Manifest& manifest() const { return manifest_; }

 protected:
  const Manifest& manifest_;
};

struct BackendOptions {
  std::string backend = "auto";
  std::string device;  // "" : the backend's default
  bool cuda_graphs = false;
  std::function<void(const std::string&)> log;
};

// The backend of ``options.backend`` for these artifacts (graph files checked against the manifest first).
std::unique_ptr<Backend> open_backend(const Manifest& m, const BackendOptions& options);

bool gpu_present();  // the NVIDIA driver reports a CUDA device (libcuda, loaded at run time)

std::unique_ptr<Backend> open_onnxruntime(const Manifest& m, const std::string& device, bool cuda_graphs);
#ifdef VQDEPLOY_WITH_TENSORRT
std::unique_ptr<Backend> open_tensorrt(const Manifest& m, bool cuda_graphs);
#endif

}  // namespace vqdeploy
