// Next-token selection on the host, as vqdeploy/runtime/sampling.py: logits / temperature, top-k
// keeping every logit equal to the k-th largest, top-p (transformers' rule), then an inverse-CDF
// draw in float64 against one uniform per sample and step. The arithmetic follows numpy's order of
// operations (pairwise summation for np.sum, sequential cumulative sums), so the probabilities are
// numpy's up to exp(): numpy's float64 exp is CPU-dependent (SVML on AVX-512 x86-64, the C library
// elsewhere) and may differ from glibc's in the last bit (see docs/cpp.md for what that can change).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace vqdeploy {

struct SamplingParams {
  double temperature = 1.0;
  std::optional<std::int64_t> top_k = 100;  // vqdeploy run's default
  std::optional<double> top_p;
  // classifier-free guidance (LlamaGen's rule, vqdeploy/runtime/guidance.py): cfg_scale > 1 runs a null-condition row
  // beside each sample's row and draws from uncond + (cond - uncond) * cfg_scale (fp32); 1 is off. cfg_interval >= 0
  // guides the first cfg_interval + 2 tokens only (the prefill's token, then steps 0..cfg_interval), -1 every token.
  double cfg_scale = 1.0;
  std::int64_t cfg_interval = -1;

  bool greedy() const { return temperature == 0.0 || (top_k && *top_k == 1); }
  bool guided() const { return cfg_scale > 1.0; }
  // whether token k (0: the prefill's) is drawn from guided logits (SamplingParams.guided_at)
  bool guided_at(std::int64_t k) const { return guided() && (cfg_interval < 0 || k <= cfg_interval + 1); }
  // the checks of SamplingParams.__post_init__ (one Input error line)
  void check() const;
};

// Scratch space reused across calls (no allocation per token once sized).
struct SamplerScratch {
  std::vector<double> p, sorted;
};

// One token from ``vocab`` float32 logits and a uniform u in [0, 1).
std::int64_t next_token(const float* logits, std::int64_t vocab, double u, const SamplingParams& params,
                        SamplerScratch& scratch);

// Classifier-free guidance on fp32 logits, LlamaGen's expression in its order and precision (sampling.guide):
// out[i] = uncond[i] + (cond[i] - uncond[i]) * float(scale).
void guide(const float* cond, const float* uncond, std::int64_t vocab, double scale, float* out);

// numpy's float64 np.sum over a contiguous row: pairwise summation, blocks of 128 unrolled by 8.
double numpy_sum(const double* a, std::int64_t n);

}  // namespace vqdeploy
