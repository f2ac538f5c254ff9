#include "vqdeploy/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "backend.hpp"
#include "conditions.hpp"
#include "graphs.hpp"
#include "vqdeploy/rng.hpp"

namespace vqdeploy {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// (N,C,H,W) in [-1, 1] -> uint8 (H,W,C): clip((x + 1) * 127.5, 0, 255), rounded half to even, in float32
std::vector<Image> to_uint8(const HostTensor& t) {
  const std::int64_t n = t.shape[0], c = t.shape[1], h = t.shape[2], w = t.shape[3];
  const float* x = t.as<float>();
  std::vector<Image> out;
  for (std::int64_t i = 0; i < n; ++i) {
    Image im;
    im.width = w;
    im.height = h;
    im.channels = c;
    im.pixels.resize(static_cast<std::size_t>(h * w * c));
    for (std::int64_t ch = 0; ch < c; ++ch)
      for (std::int64_t p = 0; p < h * w; ++p) {
        float v = (x[(i * c + ch) * h * w + p] + 1.0f) * 127.5f;
        v = std::isnan(v) ? 0.0f : std::min(std::max(v, 0.0f), 255.0f);
        im.pixels[static_cast<std::size_t>(p * c + ch)] = static_cast<std::uint8_t>(std::nearbyint(v));
      }
    out.push_back(std::move(im));
  }
  return out;
}

}  // namespace

struct Pipeline::Impl {
  Manifest manifest;
  Options options;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Graphs> graphs;
  std::unique_ptr<KVTransformer> kv;

  std::int64_t limit() const {
    std::int64_t lim = backend->max_batch("transformer");
    lim = std::min(lim, backend->max_batch("decoder"));
    const std::string enc = manifest.conditioning.encoder_graph();
    if (!enc.empty()) lim = std::min(lim, backend->max_batch(enc));
    return std::max<std::int64_t>(1, lim);
  }

  // the condition's null tokens (a guided sample's second row), or none where the model cannot be guided
  std::vector<std::int64_t> null_tokens() const {
    if (manifest.conditioning.kind == "class" && manifest.conditioning.null_class) return {*manifest.conditioning.null_class};
    return {};
  }

  // guided params need a model with a null condition (and, with the graph sampler, its guided_sampler graph)
  void check_guidance(const SamplingParams& params) const {
    check_guidance_option(manifest, params);
    if (!params.guided()) return;
    if (options.sampler == "graph" && !manifest.has_graph("guided_sampler"))
      input_error("--sampler graph with --cfg-scale needs a guided_sampler graph (exported for models that can be "
                  "guided, with --max-batch 2 or more); these artifacts have none: use --sampler host");
  }

  // samples of ``params`` per batch: a guided sample runs two transformer rows (Generator.batch_limit)
  std::int64_t samples_per_batch(const SamplingParams& params) const {
    check_guidance(params);
    if (!params.guided()) return limit();
    std::int64_t lim = limit() / 2;
    if (options.sampler == "graph") lim = std::min(lim, backend->max_batch("guided_sampler"));
    if (lim < 1)
      input_error("--cfg-scale: a guided sample runs two transformer rows, and this backend's batch limit is " +
                  std::to_string(limit()) + " (re-export with --max-batch 2 or more)");
    return lim;
  }
};

Pipeline::Pipeline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Pipeline::~Pipeline() = default;
Pipeline::Pipeline(Pipeline&&) noexcept = default;
Pipeline& Pipeline::operator=(Pipeline&&) noexcept = default;

Pipeline Pipeline::open(const std::string& artifacts, const Options& options) {
  auto impl = std::make_unique<Impl>();
  impl->manifest = read_manifest(artifacts);
  impl->options = options;
  const Manifest& m = impl->manifest;
  if (m.kind != "net2net") input_error("these artifacts hold a VQGAN only: there is no transformer to sample from");
  if (!m.states_noise_generator)
    artifact_error(m.label + ": sampling.noise_generator: missing: the artifacts do not state their noise generator "
                             "(exported by an older vqdeploy); re-export");
  if (options.sampler != "host" && options.sampler != "graph")
    input_error("--sampler " + options.sampler + ": expected one of host, graph");
  BackendOptions bo{options.backend, options.device, options.cuda_graphs, options.log};
  impl->backend = open_backend(impl->manifest, bo);
  if (options.sampler == "graph" && !m.has_graph("sampler"))
    input_error("--sampler graph needs artifacts with a sampler graph; " + impl->backend->name() + " here has none");
  impl->graphs = std::make_unique<Graphs>(*impl->backend);
  impl->kv = std::make_unique<KVTransformer>(*impl->backend);
  return Pipeline(std::move(impl));
}

const Manifest& Pipeline::manifest() const { return impl_->manifest; }
std::string Pipeline::backend() const { return impl_->backend->name(); }
std::string Pipeline::device() const { return impl_->backend->device(); }
std::int64_t Pipeline::batch_limit() const { return impl_->limit(); }

std::vector<std::int64_t> Pipeline::sample(const std::vector<std::int64_t>& condition_tokens, std::int64_t batch,
                                           const SamplingParams& params, std::uint64_t seed, std::int64_t first_sample) {
  const Manifest& m = impl_->manifest;
  params.check();
  if (seed > static_cast<std::uint64_t>(INT64_MAX)) input_error("--seed must be in 0..9223372036854775807, got " + std::to_string(seed));
  if (batch < 1 || condition_tokens.size() != static_cast<std::size_t>(batch * m.cond_tokens))
    input_error("the condition tokens must be (batch, " + std::to_string(m.cond_tokens) + ")");
  if (params.guided() && batch > impl_->samples_per_batch(params))
    input_error(std::to_string(batch) + " guided samples exceed this backend's maximum " +
                std::to_string(impl_->samples_per_batch(params)) + " (a guided sample runs two rows)");
  const std::int64_t steps = m.first_stage.latent_h * m.first_stage.latent_w;
  std::vector<double> noise = uniform_noise(seed, batch, steps, first_sample);
  std::vector<std::int64_t> null = params.guided() ? impl_->null_tokens() : std::vector<std::int64_t>{};
  std::unique_ptr<Decoding> decoding;
  if (impl_->options.sampler == "graph")
    decoding = std::make_unique<GraphDecoding>(*impl_->kv, params, noise, batch, steps, std::move(null));
  else
    decoding = std::make_unique<HostDecoding>(*impl_->kv, params, std::move(noise), batch, steps, std::move(null));
  std::vector<std::int64_t> seq = generate(*decoding, condition_tokens, m.cond_tokens, steps);
  if (!m.order) return seq;
  std::vector<std::int64_t> raster(seq.size());  // undo the permuter: sequence position k holds raster cell order[k]
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t k = 0; k < steps; ++k) raster[static_cast<std::size_t>(b * steps + (*m.order)[static_cast<std::size_t>(k)])] = seq[static_cast<std::size_t>(b * steps + k)];
  return raster;
}

std::vector<Image> Pipeline::decode(const std::vector<std::int64_t>& tokens, std::int64_t batch) {
  const Manifest& m = impl_->manifest;
  HostTensor t(DType::Int64, {batch, m.first_stage.latent_h, m.first_stage.latent_w});
  if (tokens.size() * sizeof(std::int64_t) != t.bytes()) input_error("decode: expected (batch, h, w) tokens");
  for (auto v : tokens)
    if (v < 0 || v >= m.first_stage.vocab_size)
      input_error("decode: token " + std::to_string(v) + " outside the codebook (0.." + std::to_string(m.first_stage.vocab_size - 1) + ")");
  std::memcpy(t.data.data(), tokens.data(), t.bytes());
  return to_uint8(impl_->graphs->run_graph("decoder", {{"indices", t}}).at("image"));
}

Result Pipeline::run(const Request& req) {
  const Manifest& m = impl_->manifest;
  req.params.check();
  if (req.num_samples < 1 || req.num_samples > 4096)
    input_error("--num-samples must be in 1..4096, got " + std::to_string(req.num_samples));
  if (req.seed > static_cast<std::uint64_t>(INT64_MAX))
    input_error("--seed must be in 0..9223372036854775807, got " + std::to_string(req.seed));
  const std::int64_t limit = impl_->samples_per_batch(req.params);  // checks guidance before any work
  const ConditionInput cond = read_condition(m, req.input, req.class_id, impl_->options.log);
  Result r;
  r.num_samples = req.num_samples;
  r.grid_h = m.first_stage.latent_h;
  r.grid_w = m.first_stage.latent_w;
  for (std::int64_t first = 0; first < req.num_samples; first += limit) {
    const std::int64_t n = std::min(limit, req.num_samples - first);
    auto t = std::chrono::steady_clock::now();
    std::vector<std::int64_t> prompt = condition_tokens(*impl_->graphs, m, cond, n);
    if (prompt.size() != static_cast<std::size_t>(n * m.cond_tokens))
      artifact_error(m.label + ": the condition gives " + std::to_string(prompt.size() / static_cast<std::size_t>(n)) +
                     " tokens, model.tokens.cond says " + std::to_string(m.cond_tokens) + " (re-export)");
    r.timings.cond_encoder += seconds_since(t);
    t = std::chrono::steady_clock::now();
    std::vector<std::int64_t> tokens = sample(prompt, n, req.params, req.seed, first);
    r.timings.sampling += seconds_since(t);
    t = std::chrono::steady_clock::now();
    for (auto& im : decode(tokens, n)) r.images.push_back(std::move(im));
    r.timings.decoder += seconds_since(t);
    r.tokens.insert(r.tokens.end(), tokens.begin(), tokens.end());
  }
  return r;
}

void check_class_option(const Manifest& m, const std::optional<std::int64_t>& class_id) {
  check_class(m.conditioning, class_id);
}

void check_guidance_option(const Manifest& m, const SamplingParams& params) {
  if (params.guided() && !(m.conditioning.kind == "class" && m.conditioning.null_class))
    input_error("--cfg-scale: this model (" + m.conditioning.kind + " condition) has no null condition, so it cannot be "
                "guided (classifier-free guidance needs a model trained with one, e.g. LlamaGen's class-to-image GPTs)");
}

Image grid_image(const std::vector<Image>& images) {
  const auto n = static_cast<std::int64_t>(images.size());
  const Image& first = images.at(0);
  const auto cols = static_cast<std::int64_t>(std::ceil(std::sqrt(static_cast<double>(n))));
  const std::int64_t rows = (n + cols - 1) / cols;
  Image out;
  out.width = cols * first.width;
  out.height = rows * first.height;
  out.channels = first.channels;
  out.pixels.assign(static_cast<std::size_t>(out.width * out.height * out.channels), 255);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t r = i / cols, k = i % cols;
    for (std::int64_t y = 0; y < first.height; ++y)
      std::copy_n(images[static_cast<std::size_t>(i)].pixels.data() + y * first.width * first.channels,
                  first.width * first.channels,
                  out.pixels.data() + ((r * first.height + y) * out.width + k * first.width) * out.channels);
  }
  return out;
}

}  // namespace vqdeploy
