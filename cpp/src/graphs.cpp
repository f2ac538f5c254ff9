#include "graphs.hpp"

#include <algorithm>

#include "vqdeploy/error.hpp"

namespace vqdeploy {

namespace {

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string out = "(";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

std::string spec_str(const TensorSpec& t) {
  std::string out = "(";
  for (std::size_t i = 0; i < t.shape.size(); ++i)
    out += (i ? ", " : "") + (t.shape[i].is_fixed() ? std::to_string(t.shape[i].fixed) : "'" + t.shape[i].expr + "'");
  return out + (t.shape.size() == 1 ? ",)" : ")");
}

std::size_t nbytes(DType t, const std::vector<std::int64_t>& shape) {
  return static_cast<std::size_t>(element_count(shape)) * dtype_size(t);
}

}  // namespace

std::map<std::string, std::int64_t> bind_dims(const GraphSpec& g, const std::vector<std::vector<std::int64_t>>& shapes) {
  std::map<std::string, std::int64_t> dims;
  for (std::size_t i = 0; i < g.inputs.size(); ++i) {
    const TensorSpec& spec = g.inputs[i];
    const auto& shape = shapes[i];
    if (shape.size() != spec.shape.size())
      input_error(g.name + ": input '" + spec.name + "' must have " + std::to_string(spec.shape.size()) +
                  " dims, got shape " + shape_str(shape));
    for (std::size_t k = 0; k < shape.size(); ++k) {
      const Extent& want = spec.shape[k];
      const std::int64_t got = shape[k];
      if (want.is_fixed()) {
        if (want.fixed != got)
          input_error(g.name + ": input '" + spec.name + "' has shape " + shape_str(shape) + ", expected " + spec_str(spec));
        continue;
      }
      const auto star = want.expr.find('*');
      const std::string name = want.expr.substr(0, star);
      const std::int64_t scale = star == std::string::npos ? 1 : std::stoll(want.expr.substr(star + 1));
      if (got % scale)
        input_error(g.name + ": input '" + spec.name + "' size " + std::to_string(got) + " is not a multiple of " +
                    std::to_string(scale));
      const std::int64_t value = got / scale;
      auto [it, added] = dims.emplace(name, value);
      if (!added && it->second != value) input_error(g.name + ": inconsistent '" + name + "' across inputs");
      const DimRange& r = g.dims.at(name);
      if (value < r.min || value > r.max)
        input_error(g.name + ": input '" + spec.name + "' needs " + name + " = " + std::to_string(value) +
                    ", outside the exported range " + std::to_string(r.min) + ".." + std::to_string(r.max));
    }
  }
  return dims;
}

std::vector<std::int64_t> concrete_shape(const TensorSpec& t, const std::map<std::string, std::int64_t>& dims) {
  std::vector<std::int64_t> out;
  for (const auto& e : t.shape) out.push_back(e.is_fixed() ? e.fixed : eval_dim(e.expr, dims));
  return out;
}

std::map<std::string, HostTensor> Graphs::run_graph(const std::string& graph,
                                                    const std::vector<std::pair<std::string, HostTensor>>& inputs) {
  const GraphSpec& g = backend_.manifest().graph(graph);
  std::vector<std::vector<std::int64_t>> shapes;
  std::vector<const HostTensor*> ordered;
  for (const auto& spec : g.inputs) {
    auto it = std::find_if(inputs.begin(), inputs.end(), [&](const auto& p) { return p.first == spec.name; });
    if (it == inputs.end()) input_error(graph + ": missing input " + spec.name);
    if (it->second.dtype != spec.dtype)
      input_error(graph + ": input '" + spec.name + "' must be " + dtype_name(spec.dtype) + ", got " + dtype_name(it->second.dtype));
    shapes.push_back(it->second.shape);
    ordered.push_back(&it->second);
  }
  const auto dims = bind_dims(g, shapes);
  Memory& mem = backend_.memory();
  std::vector<Buffer> buffers;
  buffers.reserve(g.inputs.size() + g.outputs.size());
  std::vector<Binding> ins, outs;
  for (std::size_t i = 0; i < g.inputs.size(); ++i) {
    buffers.emplace_back(mem, ordered[i]->bytes());
    mem.upload(buffers.back().get(), ordered[i]->data.data(), ordered[i]->bytes());
    ins.push_back({g.inputs[i].name, g.inputs[i].dtype, ordered[i]->shape, buffers.back().get()});
  }
  std::map<std::string, HostTensor> result;
  for (const auto& spec : g.outputs) {
    auto shape = concrete_shape(spec, dims);
    buffers.emplace_back(mem, nbytes(spec.dtype, shape));
    outs.push_back({spec.name, spec.dtype, shape, buffers.back().get()});
    result.emplace(spec.name, HostTensor(spec.dtype, shape));
  }
  backend_.executor(graph).run(ins, outs);
  for (const auto& b : outs) {
    HostTensor& t = result.at(b.name);
    mem.download(t.data.data(), b.data, t.bytes());
  }
  return result;
}

// --- KV cache ---------------------------------------------------------------------------------------
KVTransformer::KVTransformer(Backend& b) : backend_(b) {
  const Manifest& m = b.manifest();
  n_head_ = m.transformer.n_head;
  block_ = m.transformer.block_size;
  head_dim_ = m.transformer.head_dim;
  vocab_ = m.transformer.vocab_size;
  kv_dtype_ = m.graph("transformer").input("cache.0.key")->dtype;
  for (std::int64_t i = 0; i < m.transformer.n_layer; ++i)
    for (const char* part : {"key", "value"})
      names_.emplace_back("cache." + std::to_string(i) + "." + part, "cache_out." + std::to_string(i) + "." + part);
}

void KVTransformer::reset(std::int64_t batch) {
  const std::int64_t max_batch = backend_.max_batch("transformer");
  if (batch > max_batch)
    input_error("batch " + std::to_string(batch) + " exceeds this backend's maximum " + std::to_string(max_batch) +
                " (re-export with --max-batch, or rebuild engines with --batch)");
  if (batch > capacity_) {
    cache_.clear();
    io_.clear();
    Memory& mem = backend_.memory();
    const std::size_t bytes = nbytes(kv_dtype_, {batch, n_head_, block_, head_dim_});
    for (std::size_t i = 0; i < names_.size(); ++i) cache_.emplace_back(mem, bytes);  // zero-filled once
    position_ = Buffer(mem, nbytes(DType::Int64, {batch}));  // one position per row
    capacity_ = batch;
  }
  batch_ = batch;
  length_ = 0;
}

std::pair<Buffer*, Buffer*> KVTransformer::io_buffers(std::int64_t batch, std::int64_t t) {
  auto key = std::make_pair(batch, t);
  auto it = io_.find(key);
  if (it == io_.end()) {
    Memory& mem = backend_.memory();
    it = io_.emplace(key, std::make_pair(Buffer(mem, nbytes(DType::Int64, {batch, t})),
                                         Buffer(mem, nbytes(DType::Float32, {batch, t, vocab_})))).first;
  }
  return {&it->second.first, &it->second.second};
}

Buffer& KVTransformer::run(void* tokens, std::int64_t t) {
  const std::int64_t p = length_;
  if (p + t > block_)
    input_error("transformer: " + std::to_string(p + t) + " tokens exceed the block size " + std::to_string(block_));
  const std::vector<std::int64_t> positions(static_cast<std::size_t>(batch_), p);  // every row at the same length here
  backend_.memory().upload(position_.get(), positions.data(), positions.size() * sizeof(std::int64_t));
  Buffer& logits = *io_buffers(batch_, t).second;
  std::vector<Binding> ins{{"tokens", DType::Int64, {batch_, t}, tokens},
                           {"position", DType::Int64, {batch_}, position_.get()}};
  std::vector<Binding> outs{{"logits", DType::Float32, {batch_, t, vocab_}, logits.get()}};
  const std::vector<std::int64_t> shape{batch_, n_head_, block_, head_dim_};
  for (std::size_t i = 0; i < names_.size(); ++i) {  // the leading rows of each buffer, as input and output: in place
    ins.push_back({names_[i].first, kv_dtype_, shape, cache_[i].get()});
    outs.push_back({names_[i].second, kv_dtype_, shape, cache_[i].get()});
  }
  backend_.executor("transformer", t == 1 ? "step" : "prefill").run(ins, outs);
  length_ = p + t;
  return logits;
}

// --- guidance rows -------------------------------------------------------------------------------
RowPlan::RowPlan(std::int64_t batch, const SamplingParams& params, std::vector<std::int64_t> null)
    : samples(batch), rows(batch) {
  if (!params.guided()) return;
  if (null.empty()) input_error("--cfg-scale: this model has no null condition, so it cannot be guided");
  null_tokens = std::move(null);
  rows = 2 * batch;
}

std::vector<std::int64_t> RowPlan::prompt(const std::vector<std::int64_t>& prompt, std::int64_t length) const {
  if (!guided()) return prompt;
  const auto tc = static_cast<std::int64_t>(null_tokens.size());
  if (length < tc) input_error("a guided prompt needs the " + std::to_string(tc) + " condition tokens first");
  std::vector<std::int64_t> out(static_cast<std::size_t>(rows * length));
  std::copy(prompt.begin(), prompt.end(), out.begin());  // the conditional rows
  for (std::int64_t b = 0; b < samples; ++b) {  // the null rows: the null condition, then the same image tokens
    auto* row = out.data() + (samples + b) * length;
    std::copy(null_tokens.begin(), null_tokens.end(), row);
    std::copy_n(prompt.data() + b * length + tc, length - tc, row + tc);
  }
  return out;
}

// --- host sampler ----------------------------------------------------------------------------------
HostDecoding::HostDecoding(KVTransformer& kv, const SamplingParams& params, std::vector<double> noise,
                           std::int64_t batch, std::int64_t steps, std::vector<std::int64_t> null_tokens)
    : kv_(kv), params_(params), noise_(std::move(noise)), batch_(batch), steps_(steps),
      plan_(batch, params, std::move(null_tokens)), out_(static_cast<std::size_t>(batch * steps)),
      logits_(static_cast<std::size_t>(plan_.rows * kv.vocab())) {
  if (plan_.guided()) guided_.resize(static_cast<std::size_t>(kv.vocab()));
}

void HostDecoding::fetch(Buffer& logits, std::int64_t t) {
  const std::int64_t v = kv_.vocab(), rows = plan_.rows;
  Memory& mem = kv_.backend().memory();
  const float* src;
  if (mem.on_device()) {
    staging_.resize(static_cast<std::size_t>(rows * t * v));
    mem.download(staging_.data(), logits.get(), staging_.size() * sizeof(float));
    src = staging_.data();
  } else {
    src = static_cast<const float*>(logits.get());
  }
  for (std::int64_t b = 0; b < rows; ++b)  // the last position of each row
    std::copy_n(src + (b * t + t - 1) * v, v, logits_.data() + b * v);
}

void HostDecoding::prefill(const std::vector<std::int64_t>& prompt, std::int64_t length) {
  const std::vector<std::int64_t> rows = plan_.prompt(prompt, length);
  kv_.reset(plan_.rows);
  Buffer* tok = kv_.io_buffers(plan_.rows, length).first;
  kv_.backend().memory().upload(tok->get(), rows.data(), rows.size() * sizeof(std::int64_t));
  fetch(kv_.run(tok->get(), length), length);
}

void HostDecoding::draw() {
  const std::int64_t v = kv_.vocab();
  const bool guided = plan_.guided() && params_.guided_at(drawn_);
  for (std::int64_t b = 0; b < batch_; ++b) {
    const float* logits = logits_.data() + b * v;  // the sample's conditional row
    if (guided) {  // sampling.guide(cond, uncond, cfg_scale): its null row is batch_ rows on
      guide(logits, logits_.data() + (batch_ + b) * v, v, params_.cfg_scale, guided_.data());
      logits = guided_.data();
    }
    out_[static_cast<std::size_t>(b * steps_ + drawn_)] =
        next_token(logits, v, noise_[static_cast<std::size_t>(drawn_ * batch_ + b)], params_, scratch_);
  }
  ++drawn_;
}

void HostDecoding::extend() {
  Buffer* tok = kv_.io_buffers(plan_.rows, 1).first;
  std::vector<std::int64_t> last(static_cast<std::size_t>(plan_.rows));  // RowPlan.feed: every row of a sample
  for (std::int64_t r = 0; r < plan_.rows; ++r)
    last[static_cast<std::size_t>(r)] = out_[static_cast<std::size_t>((r % batch_) * steps_ + drawn_ - 1)];
  kv_.backend().memory().upload(tok->get(), last.data(), last.size() * sizeof(std::int64_t));
  fetch(kv_.run(tok->get(), 1), 1);
}

std::vector<std::int64_t> HostDecoding::tokens() {
  std::vector<std::int64_t> t(static_cast<std::size_t>(batch_ * drawn_));
  for (std::int64_t b = 0; b < batch_; ++b)
    std::copy_n(out_.data() + b * steps_, drawn_, t.data() + b * drawn_);
  return t;
}

// --- sampler graph ---------------------------------------------------------------------------------
GraphDecoding::GraphDecoding(KVTransformer& kv, const SamplingParams& params, const std::vector<double>& noise,
                             std::int64_t batch, std::int64_t steps, std::vector<std::int64_t> null_tokens)
    : kv_(kv), params_(params), plan_(batch, params, std::move(null_tokens)),
      sampler_(kv.backend().executor(plan_.guided() ? "guided_sampler" : "sampler")), batch_(batch),
      rows_(plan_.rows), steps_(steps), fixed_(kv.backend().fixed_step_buffers()) {
  Memory& mem = kv.backend().memory();
  // sampler_inputs: a filter that is off is top_k = vocab, top_p = 1; a guided setting adds cfg_scale
  const float temperature = static_cast<float>(params.temperature);
  const std::int64_t top_k = std::min(params.top_k.value_or(kv.vocab()), kv.vocab());
  const float top_p = static_cast<float>(params.top_p.value_or(1.0));
  const float cfg_scale = static_cast<float>(params.cfg_scale);
  setting_buffers_.reserve(4);
  auto add = [&](const char* name, DType t, const void* value) {
    setting_buffers_.emplace_back(mem, dtype_size(t));
    mem.upload(setting_buffers_.back().get(), value, dtype_size(t));
    settings_.push_back({name, t, {1}, setting_buffers_.back().get()});
  };
  add("temperature", DType::Float32, &temperature);
  add("top_k", DType::Int64, &top_k);
  add("top_p", DType::Float32, &top_p);
  if (plan_.guided()) add("cfg_scale", DType::Float32, &cfg_scale);
  std::vector<float> u(noise.size());
  for (std::size_t i = 0; i < u.size(); ++i) u[i] = static_cast<float>(noise[i]);
  uniform_ = Buffer(mem, u.size() * sizeof(float));
  mem.upload(uniform_.get(), u.data(), u.size() * sizeof(float));
  history_ = Buffer(mem, static_cast<std::size_t>(steps * rows_) * sizeof(std::int64_t));
}

void GraphDecoding::prefill(const std::vector<std::int64_t>& prompt, std::int64_t length) {
  const std::vector<std::int64_t> rows = plan_.prompt(prompt, length);
  kv_.reset(rows_);
  Buffer* tok = kv_.io_buffers(rows_, length).first;
  kv_.backend().memory().upload(tok->get(), rows.data(), rows.size() * sizeof(std::int64_t));
  logits_ = &kv_.run(tok->get(), length);
  logits_t_ = length;
}

void GraphDecoding::draw() {
  if (plan_.guided() && drawn_ > 0 && params_.guided_at(drawn_ - 1) && !params_.guided_at(drawn_)) {
    const float one = 1.0f;  // guidance off from here on (cfg_interval): a scale of 1 draws from the cond rows
    kv_.backend().memory().upload(setting_buffers_.back().get(), &one, sizeof one);
  }
  auto* history = static_cast<std::int64_t*>(history_.get()) + drawn_ * rows_;  // (R, 1) of this step
  void* into = fixed_ ? kv_.io_buffers(rows_, 1).first->get() : static_cast<void*>(history);
  std::vector<Binding> ins{{"logits", DType::Float32, {rows_, logits_t_, kv_.vocab()}, logits_->get()},
                           {"uniform", DType::Float32, {batch_}, static_cast<float*>(uniform_.get()) + drawn_ * batch_}};
  ins.insert(ins.end(), settings_.begin(), settings_.end());
  sampler_.run(ins, {{"tokens", DType::Int64, {rows_, 1}, into}});
  if (fixed_) kv_.backend().memory().copy(history, into, static_cast<std::size_t>(rows_) * sizeof(std::int64_t));
  ++drawn_;
}

void GraphDecoding::extend() {
  void* tok = fixed_ ? kv_.io_buffers(rows_, 1).first->get()
                     : static_cast<void*>(static_cast<std::int64_t*>(history_.get()) + (drawn_ - 1) * rows_);
  logits_ = &kv_.run(tok, 1);
  logits_t_ = 1;
}

std::vector<std::int64_t> GraphDecoding::tokens() {
  std::vector<std::int64_t> h(static_cast<std::size_t>(drawn_ * rows_));
  kv_.backend().memory().download(h.data(), history_.get(), h.size() * sizeof(std::int64_t));
  std::vector<std::int64_t> t(static_cast<std::size_t>(drawn_ * batch_));
  for (std::int64_t k = 0; k < drawn_; ++k)  // the conditional rows: the samples' tokens
    for (std::int64_t b = 0; b < batch_; ++b) t[static_cast<std::size_t>(b * drawn_ + k)] = h[static_cast<std::size_t>(k * rows_ + b)];
  return t;
}

std::vector<std::int64_t> generate(Decoding& d, const std::vector<std::int64_t>& prompt, std::int64_t length,
                                   std::int64_t steps) {
  d.prefill(prompt, length);
  for (std::int64_t k = 0; k < steps; ++k) {
    d.draw();
    if (k + 1 < steps) d.extend();
  }
  return d.tokens();
}

}  // namespace vqdeploy
