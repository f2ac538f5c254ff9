// The uniforms of the inverse-CDF draw, bit for bit as Python's
// numpy.random.default_rng([seed, sample_index]).random(steps): numpy's SeedSequence (entropy words:
// each integer split into uint32 words, low word first; pool size 4) seeds numpy's PCG64 (a 128-bit
// LCG with the XSL-RR output function), and random() is (next_uint64 >> 11) * 2^-53. The manifest
// states this generator (sampling.noise_generator); the C++ runtime refuses artifacts that state another.
#pragma once

#include <cstdint>
#include <vector>

namespace vqdeploy {

class SeedSequence {
 public:
  // ``entropy`` as numpy assembles it (a list of non-negative integers -> uint32 words)
  explicit SeedSequence(const std::vector<std::uint32_t>& entropy);
  std::vector<std::uint32_t> generate_state(std::size_t n_words) const;

  // numpy's _coerce_to_uint32_array for a list of non-negative integers
  static std::vector<std::uint32_t> words(const std::vector<std::uint64_t>& values);

 private:
  std::uint32_t pool_[4];
};

class Pcg64 {
 public:
  explicit Pcg64(const SeedSequence& seed);
  std::uint64_t next64();
  double random();  // [0, 1), 53 bits

 private:
  unsigned __int128 state_ = 0, inc_ = 0;
  void step();
};

// (steps, batch) uniforms, row-major: sample b of a request draws from default_rng([seed, first_sample + b])
std::vector<double> uniform_noise(std::uint64_t seed, std::int64_t batch, std::int64_t steps,
                                  std::int64_t first_sample = 0);

}  // namespace vqdeploy
