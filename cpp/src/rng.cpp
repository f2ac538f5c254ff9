// numpy/random/bit_generator.pyx (SeedSequence) and numpy/random/src/pcg64 (PCG64), transcribed.
#include "vqdeploy/rng.hpp"

namespace vqdeploy {

namespace {

constexpr std::uint32_t kInitA = 0x43b0d7e5u;
constexpr std::uint32_t kMultA = 0x931e8875u;
constexpr std::uint32_t kInitB = 0x8b51f9ddu;
constexpr std::uint32_t kMultB = 0x58f38dedu;
constexpr std::uint32_t kMixMultL = 0xca01f9ddu;
constexpr std::uint32_t kMixMultR = 0x4973f715u;
constexpr unsigned kXShift = 16;

std::uint32_t hashmix(std::uint32_t value, std::uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  value ^= value >> kXShift;
  return value;
}

std::uint32_t mix(std::uint32_t x, std::uint32_t y) {
  std::uint32_t result = kMixMultL * x - kMixMultR * y;
  result ^= result >> kXShift;
  return result;
}

constexpr unsigned __int128 kMultiplier =
    (static_cast<unsigned __int128>(2549297995355413924ULL) << 64) | 4865540595714422341ULL;

}  // namespace

std::vector<std::uint32_t> SeedSequence::words(const std::vector<std::uint64_t>& values) {
  std::vector<std::uint32_t> out;
  for (std::uint64_t v : values) {
    if (v == 0) out.push_back(0);
    while (v > 0) {
      out.push_back(static_cast<std::uint32_t>(v & 0xffffffffu));
      v >>= 32;
    }
  }
  return out;
}

SeedSequence::SeedSequence(const std::vector<std::uint32_t>& entropy) {
  // mix_entropy (no spawn key: the entropy is not padded)
  std::uint32_t hash_const = kInitA;
  const std::size_t n = 4;
  for (std::size_t i = 0; i < n; ++i) pool_[i] = hashmix(i < entropy.size() ? entropy[i] : 0u, hash_const);
  for (std::size_t src = 0; src < n; ++src)
    for (std::size_t dst = 0; dst < n; ++dst)
      if (src != dst) pool_[dst] = mix(pool_[dst], hashmix(pool_[src], hash_const));
  for (std::size_t src = n; src < entropy.size(); ++src)
    for (std::size_t dst = 0; dst < n; ++dst) pool_[dst] = mix(pool_[dst], hashmix(entropy[src], hash_const));
}

std::vector<std::uint32_t> SeedSequence::generate_state(std::size_t n_words) const {
  std::uint32_t hash_const = kInitB;
  std::vector<std::uint32_t> state(n_words);
  for (std::size_t i = 0; i < n_words; ++i) {
    std::uint32_t v = pool_[i % 4];
    v ^= hash_const;
    hash_const *= kMultB;
    v *= hash_const;
    v ^= v >> kXShift;
    state[i] = v;
  }
  return state;
}

Pcg64::Pcg64(const SeedSequence& seed) {
  // PCG64.__init__: generate_state(4, uint64) (little-endian pairs of uint32 words), then
  // pcg64_set_seed(seed = val[0:2], inc = val[2:4]) with val[0] the high 64 bits
  auto w = seed.generate_state(8);
  std::uint64_t v[4];
  for (int i = 0; i < 4; ++i) v[i] = static_cast<std::uint64_t>(w[2 * i]) | (static_cast<std::uint64_t>(w[2 * i + 1]) << 32);
  unsigned __int128 initstate = (static_cast<unsigned __int128>(v[0]) << 64) | v[1];
  unsigned __int128 initseq = (static_cast<unsigned __int128>(v[2]) << 64) | v[3];
  // pcg_setseq_128_srandom_r
  state_ = 0;
  inc_ = (initseq << 1u) | 1u;
  step();
  state_ += initstate;
  step();
}

void Pcg64::step() { state_ = state_ * kMultiplier + inc_; }

std::uint64_t Pcg64::next64() {
  // pcg_setseq_128_xsl_rr_64_random_r: step, then the XSL-RR output of the new state
  step();
  auto hi = static_cast<std::uint64_t>(state_ >> 64);
  auto lo = static_cast<std::uint64_t>(state_);
  std::uint64_t x = hi ^ lo;
  unsigned rot = static_cast<unsigned>(state_ >> 122u);
  return (x >> rot) | (x << ((-rot) & 63u));
}

double Pcg64::random() { return static_cast<double>(next64() >> 11) * (1.0 / 9007199254740992.0); }

std::vector<double> uniform_noise(std::uint64_t seed, std::int64_t batch, std::int64_t steps, std::int64_t first_sample) {
  std::vector<double> out(static_cast<std::size_t>(batch * steps));
  for (std::int64_t b = 0; b < batch; ++b) {
    Pcg64 rng(SeedSequence(SeedSequence::words({seed, static_cast<std::uint64_t>(first_sample + b)})));
    for (std::int64_t k = 0; k < steps; ++k) out[static_cast<std::size_t>(k * batch + b)] = rng.random();
  }
  return out;
}

}  // namespace vqdeploy
