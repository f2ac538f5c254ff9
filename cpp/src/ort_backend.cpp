// ONNX Runtime (CPU, or CUDA with an onnxruntime GPU build): one session per graph, created from
// the bytes that were hashed (so the file checked is the file run), IO binding by address into the
// shared loop's buffers; the KV cache is bound as input and output (TensorScatter writes in place).
#include <sched.h>

#include <cstdlib>
#include <map>
#include <memory>

#include <onnxruntime_cxx_api.h>
#include <onnxruntime_session_options_config_keys.h>

#include "artifacts.hpp"
#include "backend.hpp"
#include "cuda_memory.hpp"
#include "sha256.hpp"
#include "vqdeploy/error.hpp"

namespace vqdeploy {

namespace {

constexpr std::uint64_t kMaxGraphBytes = std::uint64_t(1) << 31;  // protobuf's 2 GiB; larger weights are external data

std::string one_line(const std::exception& e) {
  std::string s = e.what();
  auto nl = s.find('\n');
  if (nl != std::string::npos) s = s.substr(0, nl);
  return s.size() > 200 ? s.substr(0, 200) : s;
}

Ort::Env& env() {
  static Ort::Env e(std::getenv("VQDEPLOY_DEBUG") ? ORT_LOGGING_LEVEL_ERROR : ORT_LOGGING_LEVEL_FATAL, "vqdeploy");
  return e;
}

ONNXTensorElementDataType ort_type(DType t) {
  switch (t) {
    case DType::Float32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DType::Float16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case DType::BFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    case DType::Int64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

class HostMemory : public Memory {
 public:
  bool on_device() const override { return false; }
  void* allocate(std::size_t bytes) override {
    void* p = std::calloc(1, bytes);
    if (!p) backend_error("out of memory allocating " + std::to_string(bytes) + " bytes");
    return p;
  }
  void release(void* p) noexcept override { std::free(p); }
  void upload(void* dst, const void* src, std::size_t n) override { std::memmove(dst, src, n); }
  void download(void* dst, const void* src, std::size_t n) override { std::memmove(dst, src, n); }
  void copy(void* dst, const void* src, std::size_t n) override { std::memmove(dst, src, n); }
};

// the session's tensors must be the manifest's: names, element types, ranks, fixed extents
void check_io(Ort::Session& s, const GraphSpec& g, const std::string& path) {
  Ort::AllocatorWithDefaultOptions alloc;
  for (int side = 0; side < 2; ++side) {
    const bool inputs = side == 0;
    const auto& want = inputs ? g.inputs : g.outputs;
    const std::size_t count = inputs ? s.GetInputCount() : s.GetOutputCount();
    const char* kind = inputs ? "inputs" : "outputs";
    std::map<std::string, std::pair<ONNXTensorElementDataType, std::vector<std::int64_t>>> have;
    for (std::size_t i = 0; i < count; ++i) {
      auto name = inputs ? s.GetInputNameAllocated(i, alloc) : s.GetOutputNameAllocated(i, alloc);
      Ort::TypeInfo info = inputs ? s.GetInputTypeInfo(i) : s.GetOutputTypeInfo(i);
      if (info.GetONNXType() != ONNX_TYPE_TENSOR)
        artifact_error(path + ": " + kind + " '" + name.get() + "' is not a tensor; re-export");
      auto t = info.GetTensorTypeAndShapeInfo();
      have[name.get()] = {t.GetElementType(), t.GetShape()};
    }
    bool same = have.size() == want.size();
    for (const auto& t : want) same = same && have.count(t.name);
    if (!same)
      artifact_error(path + ": the graph's " + kind + " differ from manifest.json graphs." + g.name + "." + kind + "; re-export");
    for (const auto& t : want) {
      const auto& [type, shape] = have.at(t.name);
      bool ok = type == ort_type(t.dtype) && shape.size() == t.shape.size();
      for (std::size_t k = 0; ok && k < shape.size(); ++k)
        ok = !t.shape[k].is_fixed() || shape[k] < 0 || shape[k] == t.shape[k].fixed;
      if (!ok)
        artifact_error(path + ": " + std::string(kind).substr(0, std::string(kind).size() - 1) + " '" + t.name +
                       "' differs in the graph from manifest.json graphs." + g.name + " (" + dtype_name(t.dtype) +
                       " of rank " + std::to_string(t.shape.size()) + "); re-export");
    }
  }
}

class OrtExecutor : public Executor {
 public:
  OrtExecutor(std::unique_ptr<Ort::Session> s, bool cuda, std::string label)
      : session_(std::move(s)),
        info_(cuda ? Ort::MemoryInfo("Cuda", OrtDeviceAllocator, 0, OrtMemTypeDefault)
                   : Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault)),
        label_(std::move(label)) {}

  void run(const std::vector<Binding>& inputs, const std::vector<Binding>& outputs) override {
    // a binding per set of addresses and shapes, made once: the step binds the same buffers every time
    std::string key;
    for (const auto* side : {&inputs, &outputs})
      for (const auto& b : *side) {
        key += b.name + '@' + std::to_string(reinterpret_cast<std::uintptr_t>(b.data));
        for (auto d : b.shape) key += ',' + std::to_string(d);
        key += ';';
      }
    try {
      auto it = bindings_.find(key);
      if (it == bindings_.end()) {
        if (bindings_.size() >= 64) bindings_.clear();
        auto binding = std::make_unique<Ort::IoBinding>(*session_);
        for (int side = 0; side < 2; ++side) {
          for (const auto& b : side == 0 ? inputs : outputs) {
            std::size_t bytes = dtype_size(b.dtype);
            for (auto d : b.shape) bytes *= static_cast<std::size_t>(d);
            Ort::Value v = Ort::Value::CreateTensor(info_, b.data, bytes, b.shape.data(), b.shape.size(), ort_type(b.dtype));
            if (side == 0) binding->BindInput(b.name.c_str(), v);
            else binding->BindOutput(b.name.c_str(), v);
          }
        }
        it = bindings_.emplace(key, std::move(binding)).first;
      }
      session_->Run(Ort::RunOptions{nullptr}, *it->second);
    } catch (const Ort::Exception& e) {
      backend_error(label_ + ": onnxruntime failed to run it (" + one_line(e) + ")");
    }
  }

 private:
  std::unique_ptr<Ort::Session> session_;
  Ort::MemoryInfo info_;
  std::string label_;
  std::map<std::string, std::unique_ptr<Ort::IoBinding>> bindings_;
};

class OrtBackend : public Backend {
 public:
  OrtBackend(const Manifest& m, bool cuda) : Backend(m), cuda_(cuda) {
    if (m.precision == "bf16" && !cuda)
      backend_error("bf16 artifacts: ONNX Runtime on the CPU has no bf16 kernels (vqdeploy run emulates them; "
                    "vqdeploy-cpp does not): use fp32/fp16 artifacts, or TensorRT on a GPU");
#ifdef VQDEPLOY_WITH_CUDA
    if (cuda_) {
      cuda_memory_ = std::make_unique<CudaMemory>(0);
    }
#endif
    // every graph file is checked against the manifest before any work (as Python's verify_graph_files):
    // the graphs sampling uses by opening their sessions now, from the bytes that are hashed (each file is
    // read and hashed once), the others by their hash alone
    const std::string cond = m.conditioning.encoder_graph();
    for (const auto& [name, g] : m.graphs) {
      if (name == "transformer" || name == "decoder" || name == "sampler" || name == cond)
        executors_.emplace(name, open(name));
      else
        verify_file(g);
    }
  }

  std::string name() const override { return "onnxruntime"; }
  std::string device() const override { return cuda_ ? "cuda" : "cpu"; }
  Memory& memory() override {
#ifdef VQDEPLOY_WITH_CUDA
    if (cuda_memory_) return *cuda_memory_;
#endif
    return host_;
  }

  Executor& executor(const std::string& graph, const std::string&) override {
    auto it = executors_.find(graph);
    if (it == executors_.end()) it = executors_.emplace(graph, open(graph)).first;
    return *it->second;
  }

 private:
  // the graph file's (and its external data's) hash, read in chunks
  void verify_file(const GraphSpec& g) const {
    const std::string where = "manifest.json graphs." + g.name + ".file";
    const std::string path = artifact_file(manifest_.directory, g.file, where);
    if (sha256_file(path, where) != g.sha256)
      artifact_error(path + ": does not match the manifest (sha256 differs); re-export");
    verify_external_data(g);
  }

  void verify_external_data(const GraphSpec& g) const {
    if (!g.external_data_file) return;
    const std::string where = "manifest.json graphs." + g.name + ".external_data.file";
    const std::string dir = dirname_of(g.file);
    const std::string ext = artifact_file(manifest_.directory, dir.empty() ? *g.external_data_file : dir + "/" + *g.external_data_file, where);
    if (sha256_file(ext, where) != *g.external_data_sha256)
      artifact_error(ext + ": does not match the manifest (sha256 differs); re-export");
  }

  std::unique_ptr<OrtExecutor> open(const std::string& graph) {
    const GraphSpec& g = manifest_.graph(graph);
    const std::string where = "manifest.json graphs." + graph + ".file";
    const std::string path = artifact_file(manifest_.directory, g.file, where);
    verify_external_data(g);
    // the bytes hashed are the bytes loaded; their external data is checked by hash beforehand
    const std::vector<std::uint8_t> bytes = read_file_bytes(path, kMaxGraphBytes, where);
    if (sha256_hex(bytes.data(), bytes.size()) != g.sha256)
      artifact_error(path + ": does not match the manifest (sha256 differs); re-export");
    check_external_data(bytes, g.external_data_file.value_or(""), path);
    Ort::SessionOptions so;
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    so.SetLogSeverityLevel(std::getenv("VQDEPLOY_DEBUG") ? 3 : 4);
    if (g.external_data_file)
      so.AddConfigEntry(kOrtSessionOptionsModelExternalInitializersFileFolderPath,
                        join_path(manifest_.directory, dirname_of(g.file)).c_str());
    if (!cuda_) {
      cpu_set_t set;
      CPU_ZERO(&set);
      int threads = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
      so.SetIntraOpNumThreads(threads);
      // threads spin inside a run and stop when it returns, as the Python runtime (onnxruntime_backend.py):
      // spinning on after a run takes the CPU from the sampler and the next graph
      so.AddConfigEntry(kOrtSessionOptionsConfigForceSpinningStop, "1");
    }
#ifdef VQDEPLOY_WITH_CUDA
    Ort::CUDAProviderOptions cuda_options{nullptr};
    if (cuda_) {
      cuda_options = Ort::CUDAProviderOptions();
      // IEEE fp32, as the Python runtime: ONNX Runtime's default TF32 put an H200's logits 11x past the fp32 bound
      cuda_options.Update({{"device_id", "0"}, {"use_tf32", "0"}});
      cudaStream_t stream = cuda_memory_->stream();
      cuda_options.UpdateWithValue("user_compute_stream", stream);
      so.AppendExecutionProvider_CUDA_V2(*cuda_options);
    }
#endif
    std::unique_ptr<Ort::Session> session;
    try {
      session = std::make_unique<Ort::Session>(env(), bytes.data(), bytes.size(), so);
    } catch (const Ort::Exception& e) {
      artifact_error(path + ": onnxruntime cannot load it (" + one_line(e) + ")");
    }
    check_io(*session, g, path);
    return std::make_unique<OrtExecutor>(std::move(session), cuda_, graph);
  }

  bool cuda_;
  HostMemory host_;
#ifdef VQDEPLOY_WITH_CUDA
  std::unique_ptr<CudaMemory> cuda_memory_;
#endif
  std::map<std::string, std::unique_ptr<OrtExecutor>> executors_;
};

}  // namespace

bool ort_has_cuda_provider() {
  try {
    for (const auto& p : Ort::GetAvailableProviders())
      if (p == "CUDAExecutionProvider") return true;
  } catch (const Ort::Exception&) {
  }
  return false;
}

std::unique_ptr<Backend> open_onnxruntime(const Manifest& m, const std::string& device, bool) {
  return std::make_unique<OrtBackend>(m, device == "cuda");
}

}  // namespace vqdeploy
