// TensorRT (datacenter TensorRT's runtime API; libnvinfer or libnvinfer_lean): the engines and
// engines/engines.json that `vqdeploy build-trt` writes, driven through the shared loop.
//
// - engines.json is read as untrusted input and checked against this machine (TensorRT flavour and
//   version, the GPU's compute capability) and the manifest (the graph's sha256) before TensorRT sees
//   an engine; the engine file is resolved like every artifact file and its sha256 checked;
// - one execution context per (engine, optimization profile), the profile selected once: the
//   transformer engine has "prefill" and "step", so no call switches profiles;
// - run: setInputShape, setTensorAddress for every tensor, enqueueV3 on the backend's stream; the KV
//   cache is bound as cache.* and cache_out.* (TensorRT's KVCacheUpdate aliases them): in place;
// - activations: the contexts run one after another on one stream, so they share one device
//   buffer (kUSER_MANAGED), the largest any needs; with CUDA graphs each context keeps its own
//   (a captured graph records addresses);
// - CUDA graphs (--cuda-graphs): the step is enqueued once uncaptured, then captured once per set of
//   bound addresses and shapes (a batch size) and replayed with cudaGraphLaunch.
#ifdef VQDEPLOY_WITH_TENSORRT

#include <NvInferRuntime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <set>

#include "artifacts.hpp"
#include "backend.hpp"
#include "cuda_memory.hpp"
#include "json_node.hpp"
#include "sha256.hpp"
#include "vqdeploy/error.hpp"

namespace vqdeploy {

namespace {

constexpr std::uint64_t kMaxEngineBytes = std::uint64_t(1) << 40;

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kERROR) {
      last_error_ = msg ? msg : "";
      if (last_error_.size() > 200) last_error_ = last_error_.substr(0, 200);
    }
    if (debug_ && severity <= Severity::kWARNING) std::cerr << "TensorRT: " << (msg ? msg : "") << std::endl;
  }
  std::string last_error() const { return last_error_.empty() ? "no message" : last_error_; }
  void clear() { last_error_.clear(); }

 private:
  bool debug_ = std::getenv("VQDEPLOY_DEBUG") != nullptr;
  std::string last_error_;
};

std::string runtime_version() {
  return std::to_string(getInferLibMajorVersion()) + "." + std::to_string(getInferLibMinorVersion()) + "." +
         std::to_string(getInferLibPatchVersion()) + "." + std::to_string(getInferLibBuildVersion());
}

struct Range {
  std::vector<std::int64_t> min, opt, max;
};

struct EngineEntry {
  std::string file, sha256, graph_sha256, flavour, version;
  std::vector<std::string> compute_capabilities, profile_order;
  std::map<std::string, std::map<std::string, Range>> profiles;
};

// engines/engines.json (vqdeploy/trt/record.py ENGINES): every field read here is checked
std::map<std::string, EngineEntry> read_engines(const Manifest& m, std::string& directory) {
  const std::string rebuild = "build them: vqdeploy build-trt --artifacts " + m.directory;
  const std::string none = m.directory + ": no TensorRT engines (no readable engines/engines.json); " + rebuild;
  directory = artifact_dir(m.directory, "engines", "engines");
  if (directory.empty()) artifact_error(none);
  const std::string label = join_path(directory, "engines.json");
  const std::string path = artifact_file(directory, "engines.json", label, /*must_exist=*/false);
  const std::string text = [&] {
    try {
      return read_small_file(path, kMaxJsonBytes, label, ErrorKind::Artifact);
    } catch (const Error&) {
      artifact_error(none);
    }
  }();
  const JsonDocument doc(text, label, ErrorKind::Artifact);
  const Node root = doc.root(label + ":");
  if (!root.is_object() || !root.has("format") || !root.at("format").equals(std::string("vqdeploy-engines")) ||
      !root.has("format_version") || !root.at("format_version").equals(std::int64_t(1)))
    artifact_error(none);
  std::map<std::string, EngineEntry> out;
  Node engines = root.at("engines");
  for (const auto& name : engines.keys(0, 32)) {
    Node e = engines.at(name);
    EngineEntry x;
    x.file = e.at("file").string(80);
    if (x.file != name + ".engine") e.at("file").fail("'" + name + ".engine'");
    x.sha256 = e.at("sha256").string(64);
    x.graph_sha256 = e.at("graph").at("sha256").string(64);
    x.flavour = e.at("tensorrt").at("flavour").string(32);
    x.version = e.at("tensorrt").at("version").string(64);
    Node ccs = e.at("target").at("compute_capabilities");
    for (std::size_t i = 0, n = ccs.list(1, 16); i < n; ++i) x.compute_capabilities.push_back(ccs.item(i).string(8));
    Node order = e.at("profile_order");
    for (std::size_t i = 0, n = order.list(1, 16); i < n; ++i) x.profile_order.push_back(order.item(i).string(64));
    Node profiles = e.at("profiles");
    auto names = profiles.keys(1, 16);
    if (names.size() != x.profile_order.size()) order.fail("the names of profiles, in order");
    for (const auto& p : x.profile_order) {
      if (!profiles.has(p)) order.fail("the names of profiles, in order");
      Node prof = profiles.at(p);
      for (const auto& t : prof.keys(1, 2 * 1024 + 8)) {
        Node r = prof.at(t);
        Range range;
        for (auto [key, dst] : {std::pair<const char*, std::vector<std::int64_t>*>{"min", &range.min}, {"opt", &range.opt}, {"max", &range.max}}) {
          Node d = r.at(key);
          for (std::size_t i = 0, n = d.list(0, 8); i < n; ++i) dst->push_back(d.item(i).integer(0, 1 << 20));
        }
        bool ok = range.min.size() == range.opt.size() && range.opt.size() == range.max.size();
        for (std::size_t i = 0; ok && i < range.min.size(); ++i) ok = range.min[i] <= range.opt[i] && range.opt[i] <= range.max[i];
        if (!ok) r.fail("min <= opt <= max of one rank");
        x.profiles[p][t] = range;
      }
    }
    out[name] = x;
  }
  return out;
}

nvinfer1::DataType trt_type(DType t) {
  switch (t) {
    case DType::Float32: return nvinfer1::DataType::kFLOAT;
    case DType::Float16: return nvinfer1::DataType::kHALF;
    case DType::BFloat16: return nvinfer1::DataType::kBF16;
    case DType::Int64: return nvinfer1::DataType::kINT64;
  }
  return nvinfer1::DataType::kFLOAT;
}

std::string dims_str(const std::vector<std::int64_t>& d) {
  std::string s = "(";
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + (d.size() == 1 ? ",)" : ")");
}

// one device buffer bound to every context as its activation memory; grows to the largest need
class SharedActivations {
 public:
  explicit SharedActivations(CudaMemory& m) : memory_(m) {}
  void attach(nvinfer1::IExecutionContext* ctx, std::int64_t size) {
    contexts_.push_back(ctx);
    if (size > size_) {
      buffer_ = Buffer(memory_, static_cast<std::size_t>(std::max<std::int64_t>(size, 256)));  // the old one is freed after a sync
      size_ = static_cast<std::int64_t>(buffer_.bytes());
      for (auto* c : contexts_) c->setDeviceMemoryV2(buffer_.get(), size_);
    } else {
      ctx->setDeviceMemoryV2(buffer_.get(), size_);
    }
  }

 private:
  CudaMemory& memory_;
  Buffer buffer_;
  std::int64_t size_ = 0;
  std::vector<nvinfer1::IExecutionContext*> contexts_;
};

class TrtExecutor : public Executor {
 public:
  TrtExecutor(std::unique_ptr<nvinfer1::IExecutionContext> ctx, std::string label, const EngineEntry& entry,
              std::string profile, CudaMemory& memory, void* scratch, Logger& logger, bool capture)
      : ctx_(std::move(ctx)), label_(std::move(label)), entry_(entry), profile_(std::move(profile)), memory_(memory),
        scratch_(scratch), logger_(logger), capture_(capture) {}

  ~TrtExecutor() override {
    for (auto& [key, g] : graphs_) {
      cudaGraphExecDestroy(g.second);
      cudaGraphDestroy(g.first);
    }
  }

  void run(const std::vector<Binding>& inputs, const std::vector<Binding>& outputs) override {
    std::string key;
    for (const auto& b : inputs) {
      nvinfer1::Dims dims{};
      dims.nbDims = static_cast<std::int32_t>(b.shape.size());
      for (std::size_t i = 0; i < b.shape.size(); ++i) dims.d[i] = b.shape[i];
      if (!ctx_->setInputShape(b.name.c_str(), dims)) {
        auto it = entry_.profiles.at(profile_).find(b.name);
        std::string range = it == entry_.profiles.at(profile_).end()
                                ? ""
                                : " (min " + dims_str(it->second.min) + ", max " + dims_str(it->second.max) + ")";
        input_error(label_ + ": input '" + b.name + "' of shape " + dims_str(b.shape) + " is outside the engine's '" +
                    profile_ + "' profile" + range + "; rebuild with vqdeploy build-trt --batch/--size to cover it");
      }
      ctx_->setTensorAddress(b.name.c_str(), address(b));
      key += dims_str(b.shape);
    }
    if (!checked_.count(key)) {  // the buffers sized from the manifest fit the engine's output shapes
      for (const auto& b : outputs) {
        nvinfer1::Dims d = ctx_->getTensorShape(b.name.c_str());
        std::vector<std::int64_t> want(d.d, d.d + std::max(d.nbDims, 0));
        if (want != b.shape)
          backend_error(label_ + ": output '" + b.name + "' has shape " + dims_str(want) + " in the engine but " +
                        dims_str(b.shape) + " from the manifest; rebuild the engines");
      }
      checked_.insert(key);
    }
    for (const auto& b : outputs) ctx_->setTensorAddress(b.name.c_str(), address(b));
    if (!capture_) return enqueue();
    for (const auto* side : {&inputs, &outputs})
      for (const auto& b : *side) key += b.name + "@" + std::to_string(reinterpret_cast<std::uintptr_t>(b.data)) + ";";
    launch(key);
  }

 private:
  void* address(const Binding& b) const {
    for (auto d : b.shape)
      if (d == 0) return scratch_;  // an address for zero-size tensors
    return b.data;
  }

  void enqueue() {
    logger_.clear();
    if (!ctx_->enqueueV3(memory_.stream()))
      backend_error(label_ + ": TensorRT failed to enqueue the engine (" + logger_.last_error() + ")");
  }

  // the first enqueue of a binding runs uncaptured (TensorRT may set up state a capture must not
  // record); the second is captured; every later one replays
  void launch(const std::string& key) {
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      if (!seen_.count(key)) {
        seen_.insert(key);
        return enqueue();
      }
      cudaStream_t stream = memory_.stream();
      cuda_check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
      bool ok = ctx_->enqueueV3(stream);
      cudaGraph_t graph = nullptr;
      cudaError_t end = cudaStreamEndCapture(stream, &graph);
      if (!ok || end != cudaSuccess) {
        if (graph) cudaGraphDestroy(graph);
        backend_error(label_ + ": capturing the step as a CUDA graph failed (" +
                      (ok ? std::string(cudaGetErrorString(end)) : logger_.last_error()) + "); run without --cuda-graphs");
      }
      cudaGraphExec_t exec = nullptr;
      cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
      if (inst != cudaSuccess) {
        cudaGraphDestroy(graph);
        backend_error(label_ + ": cudaGraphInstantiate failed (" + std::string(cudaGetErrorString(inst)) + ")");
      }
      it = graphs_.emplace(key, std::make_pair(graph, exec)).first;
      ++captures;
    }
    cuda_check(cudaGraphLaunch(it->second.second, memory_.stream()), "cudaGraphLaunch");
    ++replays;
  }

  std::unique_ptr<nvinfer1::IExecutionContext> ctx_;
  std::string label_;
  const EngineEntry& entry_;
  std::string profile_;
  CudaMemory& memory_;
  void* scratch_;
  Logger& logger_;
  bool capture_;
  std::set<std::string> checked_, seen_;
  std::map<std::string, std::pair<cudaGraph_t, cudaGraphExec_t>> graphs_;

 public:
  std::int64_t captures = 0, replays = 0;
};

class TrtBackend : public Backend {
 public:
  TrtBackend(const Manifest& m, bool cuda_graphs)
      : Backend(m), memory_(0), cuda_graphs_(cuda_graphs), version_(runtime_version()), gpu_(memory_.name()),
        cc_(memory_.compute_capability()), scratch_(memory_, 256) {
    entries_ = read_engines(m, engines_dir_);
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) backend_error("TensorRT " + version_ + " could not create a runtime (" + logger_.last_error() + ")");
    if (!cuda_graphs_) shared_ = std::make_unique<SharedActivations>(memory_);
  }

  ~TrtBackend() override {
    executors_.clear();  // contexts before engines before the runtime
    shared_.reset();
    engines_.clear();
    runtime_.reset();
  }

  std::string name() const override { return "tensorrt"; }
  std::string device() const override { return "cuda"; }
  Memory& memory() override { return memory_; }
  bool fixed_step_buffers() const override { return cuda_graphs_; }

  std::int64_t max_batch(const std::string& graph) override {
    const EngineEntry& e = engine(graph).second;
    std::int64_t best = -1;
    for (const auto& t : manifest_.graph(graph).inputs) {
      if (t.shape.empty() || t.shape[0].expr != "batch") continue;
      for (const auto& [p, ranges] : e.profiles) {
        auto it = ranges.find(t.name);
        if (it != ranges.end() && !it->second.max.empty())
          best = best < 0 ? it->second.max[0] : std::min(best, it->second.max[0]);
      }
    }
    return best < 0 ? Backend::max_batch(graph) : best;
  }

  Executor& executor(const std::string& graph, const std::string& profile_name) override {
    auto& [engine_ptr, entry] = engine(graph);
    const std::string profile = profile_name.empty() ? entry.profile_order.front() : profile_name;
    auto key = std::make_pair(graph, profile);
    auto it = executors_.find(key);
    if (it != executors_.end()) return *it->second;
    auto pos = std::find(entry.profile_order.begin(), entry.profile_order.end(), profile);
    if (pos == entry.profile_order.end())
      artifact_error(graph + ": the engine has no '" + profile + "' profile; rebuild: vqdeploy build-trt --artifacts " +
                     manifest_.directory);
    const int index = static_cast<int>(pos - entry.profile_order.begin());
    using Strategy = nvinfer1::ExecutionContextAllocationStrategy;
    std::unique_ptr<nvinfer1::IExecutionContext> ctx(
        engine_ptr->createExecutionContext(shared_ ? Strategy::kUSER_MANAGED : Strategy::kSTATIC));
    if (!ctx) backend_error("TensorRT could not create an execution context (out of GPU memory?)");
    if (!ctx->setOptimizationProfileAsync(index, memory_.stream()))
      backend_error(graph + ": TensorRT cannot select the '" + profile + "' profile (" + logger_.last_error() + ")");
    if (shared_) shared_->attach(ctx.get(), engine_ptr->getDeviceMemorySizeForProfileV2(index));
    const std::string label = entry.profile_order.size() == 1 ? graph : graph + " (" + profile + ")";
    const bool capture = cuda_graphs_ && profile == "step";
    it = executors_.emplace(key, std::make_unique<TrtExecutor>(std::move(ctx), label, entry, profile, memory_,
                                                                scratch_.get(), logger_, capture)).first;
    return *it->second;
  }

 private:
  std::pair<std::unique_ptr<nvinfer1::ICudaEngine>, EngineEntry>& engine(const std::string& graph) {
    auto it = engines_.find(graph);
    if (it != engines_.end()) return it->second;
    const GraphSpec& g = manifest_.graph(graph);
    const std::string rebuild = "rebuild: vqdeploy build-trt --artifacts " + manifest_.directory;
    auto e = entries_.find(graph);
    if (e == entries_.end()) artifact_error(engines_dir_ + ": no engine for the " + graph + " graph; " + rebuild);
    const EngineEntry& entry = e->second;
    std::vector<std::string> problems;
    if (entry.flavour != "tensorrt" || entry.version != version_)
      problems.push_back("built with " + std::string(entry.flavour == "tensorrt" ? "TensorRT" : entry.flavour) + " " +
                         entry.version + ", this machine runs TensorRT " + version_);
    if (std::find(entry.compute_capabilities.begin(), entry.compute_capabilities.end(), cc_) == entry.compute_capabilities.end()) {
      std::string built;
      for (const auto& c : entry.compute_capabilities) built += (built.empty() ? "SM" : ", SM") + c.substr(0, c.find('.')) + c.substr(c.find('.') + 1);
      problems.push_back("built for " + built + ", this GPU (" + gpu_ + ") is SM" + cc_.substr(0, cc_.find('.')) + cc_.substr(cc_.find('.') + 1));
    }
    if (entry.graph_sha256 != g.sha256) problems.push_back("built from another " + g.file + " (the graphs were re-exported since)");
    if (!problems.empty()) {
      std::string all;
      for (const auto& p : problems) all += (all.empty() ? "" : "; ") + p;
      artifact_error(join_path(engines_dir_, entry.file) + ": " + all + "; " + rebuild);
    }
    for (const auto& t : g.inputs)
      for (const auto& [p, ranges] : entry.profiles)
        if (!ranges.count(t.name))
          artifact_error(join_path(engines_dir_, "engines.json") + ": engines." + graph + ".profiles has no shapes for input '" +
                         t.name + "'; " + rebuild);
    const std::string path = artifact_file(engines_dir_, entry.file, "engines.json engines." + graph + ".file");
    const std::vector<std::uint8_t> blob = read_file_bytes(path, kMaxEngineBytes, path);
    if (sha256_hex(blob.data(), blob.size()) != entry.sha256)
      artifact_error(path + " does not match engines.json (modified or partly written); " + rebuild);
    logger_.clear();
    std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine) artifact_error(path + ": TensorRT " + version_ + " cannot load it (" + logger_.last_error() + "); " + rebuild);
    // the engine's tensors are the manifest's
    std::set<std::string> names;
    for (int i = 0; i < engine->getNbIOTensors(); ++i) names.insert(engine->getIOTensorName(i));
    for (const auto* side : {&g.inputs, &g.outputs})
      for (const auto& t : *side) {
        if (!names.count(t.name) || engine->getTensorDataType(t.name.c_str()) != trt_type(t.dtype))
          artifact_error(path + ": tensor '" + t.name + "' differs from manifest.json graphs." + graph + "; " + rebuild);
        names.erase(t.name);
      }
    if (!names.empty()) artifact_error(path + ": tensor '" + *names.begin() + "' is not in manifest.json graphs." + graph + "; " + rebuild);
    return engines_.emplace(graph, std::make_pair(std::move(engine), entry)).first->second;
  }

  CudaMemory memory_;
  bool cuda_graphs_;
  std::string version_, gpu_, cc_;
  Buffer scratch_;
  Logger logger_;
  std::string engines_dir_;
  std::map<std::string, EngineEntry> entries_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::map<std::string, std::pair<std::unique_ptr<nvinfer1::ICudaEngine>, EngineEntry>> engines_;
  std::unique_ptr<SharedActivations> shared_;
  std::map<std::pair<std::string, std::string>, std::unique_ptr<TrtExecutor>> executors_;
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt(const Manifest& m, bool cuda_graphs) {
  return std::make_unique<TrtBackend>(m, cuda_graphs);
}

}  // namespace vqdeploy

#endif  // VQDEPLOY_WITH_TENSORRT
