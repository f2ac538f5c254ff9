// The shared loop over any Backend (vqdeploy/runtime/backends/graph_backend.py and
// vqdeploy/runtime/generator.py): graphs run on host tensors with output shapes from the
// manifest; the KV-cached transformer with its buffers allocated once; a generation as a small
// state object (prefill, draw, extend, tokens) whose strategy is the host sampler or the
// exported sampler graph.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "host_tensor.hpp"
#include "vqdeploy/sampler.hpp"

namespace vqdeploy {

class Graphs {
 public:
  explicit Graphs(Backend& b) : backend_(b) {}
  // One call of ``graph`` on host inputs (checked against the manifest's shapes and dim ranges); host outputs.
  std::map<std::string, HostTensor> run_graph(const std::string& graph,
                                              const std::vector<std::pair<std::string, HostTensor>>& inputs);
  Backend& backend() { return backend_; }

 private:
  Backend& backend_;
};

// the dims of ``g`` bound by these input shapes (Input error on a mismatch or a dim out of range)
std::map<std::string, std::int64_t> bind_dims(const GraphSpec& g, const std::vector<std::vector<std::int64_t>>& shapes);
std::vector<std::int64_t> concrete_shape(const TensorSpec& t, const std::map<std::string, std::int64_t>& dims);

class KVTransformer {
 public:
  explicit KVTransformer(Backend& b);
  // a new sequence of ``batch`` rows; buffers grow once to the largest batch
  void reset(std::int64_t batch);
  // the (B,T) token and (B,T,V) logits buffers, allocated once per shape (prefill, step)
  std::pair<Buffer*, Buffer*> io_buffers(std::int64_t batch, std::int64_t t);
  // append (B,T) tokens (in backend memory) at the cache's length; the (B,T,V) logits buffer
  Buffer& run(void* tokens, std::int64_t t);

  std::int64_t vocab() const { return vocab_; }
  std::int64_t batch() const { return batch_; }
  Backend& backend() { return backend_; }

 private:
  Backend& backend_;
  std::int64_t n_head_, block_, head_dim_, vocab_;
  DType kv_dtype_;
  std::vector<std::pair<std::string, std::string>> names_;  // (cache.i.part, cache_out.i.part)
  std::vector<Buffer> cache_;
  Buffer position_;
  std::map<std::pair<std::int64_t, std::int64_t>, std::pair<Buffer, Buffer>> io_;
  std::int64_t capacity_ = 0, batch_ = 0, length_ = 0;
};

class Decoding {
 public:
  virtual ~Decoding() = default;
  virtual void prefill(const std::vector<std::int64_t>& prompt, std::int64_t length) = 0;  // (B, length)
  virtual void draw() = 0;    // the next token of every row
  virtual void extend() = 0;  // feed the last drawn tokens
  virtual std::vector<std::int64_t> tokens() = 0;  // (B, drawn)
};

// Classifier-free guidance's rows (vqdeploy/runtime/guidance.py RowPlan, one sampling setting): unguided, the
// transformer rows are the B samples; guided, B conditional rows then B rows whose condition tokens are the null
// condition's, each fed its sample's token.
struct RowPlan {
  std::int64_t samples = 0, rows = 0;
  std::vector<std::int64_t> null_tokens;  // the null condition (Tc tokens); empty: unguided
  RowPlan(std::int64_t batch, const SamplingParams& params, std::vector<std::int64_t> null);
  bool guided() const { return !null_tokens.empty(); }
  // (B, length) per-sample prompt -> (R, length) transformer rows
  std::vector<std::int64_t> prompt(const std::vector<std::int64_t>& prompt, std::int64_t length) const;
};

// logits to the host, the C++ sampler (every backend); ``noise`` (steps, batch) uniforms; ``null_tokens``: the
// condition's null tokens, which guided params need
class HostDecoding : public Decoding {
 public:
  HostDecoding(KVTransformer& kv, const SamplingParams& params, std::vector<double> noise, std::int64_t batch,
               std::int64_t steps, std::vector<std::int64_t> null_tokens = {});
  void prefill(const std::vector<std::int64_t>& prompt, std::int64_t length) override;
  void draw() override;
  void extend() override;
  std::vector<std::int64_t> tokens() override;

 private:
  void fetch(Buffer& logits, std::int64_t t);
  KVTransformer& kv_;
  SamplingParams params_;
  std::vector<double> noise_;
  std::int64_t batch_, steps_, drawn_ = 0;
  RowPlan plan_;
  std::vector<std::int64_t> out_;   // (B, steps)
  std::vector<float> logits_;       // (R, V): the last position of each transformer row
  std::vector<float> guided_;       // (V): one sample's guided logits
  std::vector<float> staging_;      // device logits brought to the host
  SamplerScratch scratch_;
};

// the graph-only loop: transformer -> sampler graph (guided: guided_sampler, whose (2B, 1) tokens feed both rows of
// each sample) -> transformer; logits and tokens stay in the backend's memory, the tokens come back once
// (DeviceDecoding in the Python package)
class GraphDecoding : public Decoding {
 public:
  GraphDecoding(KVTransformer& kv, const SamplingParams& params, const std::vector<double>& noise,
                std::int64_t batch, std::int64_t steps, std::vector<std::int64_t> null_tokens = {});
  void prefill(const std::vector<std::int64_t>& prompt, std::int64_t length) override;
  void draw() override;
  void extend() override;
  std::vector<std::int64_t> tokens() override;

 private:
  KVTransformer& kv_;
  SamplingParams params_;
  RowPlan plan_;
  Executor& sampler_;
  std::int64_t batch_, rows_, steps_, drawn_ = 0, logits_t_ = 0;
  std::vector<Binding> settings_;
  std::vector<Buffer> setting_buffers_;
  Buffer uniform_, history_;  // history: (steps, R) tokens
  Buffer* logits_ = nullptr;
  bool fixed_;
};

// prefill (B, length) prompt, then ``steps`` tokens per row: (B, steps) in sequence order
std::vector<std::int64_t> generate(Decoding& d, const std::vector<std::int64_t>& prompt, std::int64_t length,
                                   std::int64_t steps);

}  // namespace vqdeploy
