// The vqdeploy C++ runtime: an artifacts directory written by `vqdeploy export` (and the engines of
// `vqdeploy build-trt`) -> images, the same tokens as Python's `vqdeploy run` for the same seed.
//
//   auto pipe = vqdeploy::Pipeline::open("artifacts/demo");          // checks manifest + graph hashes
//   vqdeploy::Request req;
//   req.input = "sketch.png";  req.num_samples = 4;  req.seed = 0;
//   vqdeploy::Result r = pipe.run(req);                                 // r.tokens, r.images
//
// Every refusal (bad artifacts, a bad input, a runtime that cannot run) is one vqdeploy::Error
// with a one-line message.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vqdeploy/error.hpp"
#include "vqdeploy/image.hpp"
#include "vqdeploy/manifest.hpp"
#include "vqdeploy/sampler.hpp"

namespace vqdeploy {

struct Options {
  std::string backend = "auto";   // auto (TensorRT where engines and a GPU are), onnxruntime, tensorrt
  std::string device;             // "" (the backend's choice), cpu, cuda
  std::string sampler = "host";   // host (the C++ sampler) or graph (the exported sampler.onnx / engine)
  bool cuda_graphs = false;       // TensorRT: capture the one-token step once per batch size and replay it
  std::function<void(const std::string&)> log;  // notes and warnings (vqdeploy-cpp: stderr); may be empty
};

struct Request {
  std::optional<std::string> input;      // the condition file: a PNG, or a scene JSON for object layouts
  std::optional<std::int64_t> class_id;  // class-conditional models
  std::int64_t num_samples = 1;
  SamplingParams params;
  std::uint64_t seed = 0;  // 0 <= seed < 2^63; sample i draws from numpy's default_rng([seed, i])
};

struct Timings {
  double cond_encoder = 0, sampling = 0, decoder = 0;  // seconds
};

struct Result {
  std::int64_t num_samples = 0, grid_h = 0, grid_w = 0;
  std::vector<std::int64_t> tokens;  // (num_samples, grid_h, grid_w) token ids in raster order
  std::vector<Image> images;         // uint8 (height, width, channels)
  Timings timings;
};

class Pipeline {
 public:
  // Read and check the manifest; open the backend (the graph files' hashes are checked here).
  static Pipeline open(const std::string& artifacts, const Options& options = {});
  ~Pipeline();
  Pipeline(Pipeline&&) noexcept;
  Pipeline& operator=(Pipeline&&) noexcept;

  // condition -> condition tokens -> prefill -> KV-cached steps -> sampler -> permuter's order -> decoder;
  // requests beyond the backend's batch limit run in batches (the same images)
  Result run(const Request& request);

  // The token loop alone: (batch, n) condition tokens -> (batch, h, w) raster tokens of samples
  // first_sample .. first_sample + batch - 1.
  std::vector<std::int64_t> sample(const std::vector<std::int64_t>& condition_tokens, std::int64_t batch,
                                   const SamplingParams& params, std::uint64_t seed, std::int64_t first_sample = 0);
  // (batch, h, w) raster tokens -> images
  std::vector<Image> decode(const std::vector<std::int64_t>& tokens, std::int64_t batch);

  const Manifest& manifest() const;
  std::string backend() const;
  std::string device() const;
  std::int64_t batch_limit() const;

 private:
  struct Impl;
  explicit Pipeline(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ``--class`` against the model: required (and in range) for class-conditional models, refused otherwise.
void check_class_option(const Manifest& m, const std::optional<std::int64_t>& class_id);

// ``--cfg-scale`` > 1 against the model: refused for a model without a null condition (only LlamaGen's have one).
void check_guidance_option(const Manifest& m, const SamplingParams& params);

// Samples side by side on a white background, ceil(sqrt(n)) columns (vqdeploy run --grid).
Image grid_image(const std::vector<Image>& images);

}  // namespace vqdeploy
