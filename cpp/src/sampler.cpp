#include "vqdeploy/sampler.hpp"

#include <algorithm>
#include <charconv>
#include <string>
#include <cmath>
#include <functional>
#include <limits>

#include "vqdeploy/error.hpp"

namespace vqdeploy {

namespace {

std::string shown(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];  // Python's repr: the shortest round trip, with ".0" for whole numbers
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, res.ptr);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

// numpy's pairwise_sum (numpy/_core/src/umath/loops_utils.h.src) for a contiguous double row
double pairwise(const double* a, std::int64_t n) {
  if (n < 8) {
    double res = -0.0;
    for (std::int64_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    std::int64_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  std::int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise(a, n2) + pairwise(a + n2, n - n2);
}

}  // namespace

double numpy_sum(const double* a, std::int64_t n) { return 0.0 + pairwise(a, n); }  // the reduction's identity, then the row

void SamplingParams::check() const {
  if (!std::isfinite(temperature)) input_error("--temperature must be a finite number, got " + shown(temperature));
  if (temperature < 0.0) input_error("--temperature must be >= 0.0, got " + shown(temperature));
  if (top_k && (*top_k < 1 || *top_k > 2147483647))
    input_error("--top-k must be in 1..2147483647, got " + std::to_string(*top_k));
  if (top_p) {
    if (!std::isfinite(*top_p)) input_error("--top-p must be a finite number, got " + shown(*top_p));
    if (*top_p <= 0.0) input_error("--top-p must be > 0.0, got " + shown(*top_p));
    if (*top_p > 1.0) input_error("--top-p must be <= 1.0, got " + shown(*top_p));
  }
  // limits.py MAX_CFG_SCALE, MAX_CFG_INTERVAL
  if (!std::isfinite(cfg_scale)) input_error("--cfg-scale must be a finite number, got " + shown(cfg_scale));
  if (cfg_scale < 1.0) input_error("--cfg-scale must be >= 1.0, got " + shown(cfg_scale));
  if (cfg_scale > 1000.0) input_error("--cfg-scale must be <= 1000.0, got " + shown(cfg_scale));
  if (cfg_interval < -1 || cfg_interval > (std::int64_t(1) << 16))
    input_error("--cfg-interval must be in -1..65536, got " + std::to_string(cfg_interval));
}

void guide(const float* cond, const float* uncond, std::int64_t vocab, double scale, float* out) {
  const auto s = static_cast<float>(scale);  // np.float32(scale); fp32 throughout, no contraction (-ffp-contract=off)
  for (std::int64_t i = 0; i < vocab; ++i) {
    const float diff = cond[i] - uncond[i];
    const float scaled = diff * s;
    out[i] = uncond[i] + scaled;
  }
}

std::int64_t next_token(const float* logits, std::int64_t vocab, double u, const SamplingParams& params,
                        SamplerScratch& scratch) {
  const auto n = static_cast<std::size_t>(vocab);
  if (params.greedy()) {  // np.argmax over float64: the first maximum (a NaN counts as the maximum)
    std::int64_t best = 0;
    double top = static_cast<double>(logits[0]);
    if (std::isnan(top)) return 0;
    for (std::int64_t i = 1; i < vocab; ++i) {
      double v = static_cast<double>(logits[i]);
      if (std::isnan(v)) return i;
      if (v > top) {
        top = v;
        best = i;
      }
    }
    return best;
  }
  // filtered_probs: temperature, top-k (ties at the k-th kept), softmax, top-p
  std::vector<double>& x = scratch.p;
  x.resize(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<double>(logits[i]) / params.temperature;
  if (params.top_k && *params.top_k < vocab) {
    std::vector<double>& tmp = scratch.sorted;
    tmp.assign(x.begin(), x.end());
    auto kth_pos = tmp.begin() + (vocab - *params.top_k);
    std::nth_element(tmp.begin(), kth_pos, tmp.end());
    const double kth = *kth_pos;
    for (auto& v : x)
      if (v < kth) v = -std::numeric_limits<double>::infinity();
  }
  double top = x[0];
  for (double v : x) top = std::max(top, v);
  for (auto& v : x) v = std::exp(v - top);
  const double total = numpy_sum(x.data(), vocab);
  for (auto& v : x) v /= total;
  if (params.top_p && *params.top_p < 1.0) {
    std::vector<double>& srt = scratch.sorted;
    srt.assign(x.begin(), x.end());
    std::sort(srt.begin(), srt.end(), std::greater<double>());
    double cum = 0.0, threshold = std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < n; ++i) {
      cum += srt[i];
      double before = cum - srt[i];  // mass of the strictly more likely tokens, as numpy computes it
      if (before <= *params.top_p) threshold = std::min(threshold, srt[i]);
    }
    for (auto& v : x)
      if (!(v >= threshold)) v = 0.0;
  }
  // inverse CDF: the number of CDF entries <= u * total mass
  double cdf = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    cdf += x[i];
    x[i] = cdf;
  }
  const double target = u * x[n - 1];
  std::int64_t idx = 0;
  for (std::size_t i = 0; i < n; ++i) idx += x[i] <= target;
  return std::min<std::int64_t>(idx, vocab - 1);
}

}  // namespace vqdeploy
