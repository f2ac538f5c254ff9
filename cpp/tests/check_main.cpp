// vqdeploy-cpp-check: the pieces tests/test_cpp.py compares with numpy and Python one by one.
//   uniforms SEED SAMPLE STEPS              -> the uniforms, one per line (%.17g)
//   sample V TEMPERATURE TOP_K TOP_P < rows -> one token per row of V logits + a uniform ("-" : no filter)
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "vqdeploy/error.hpp"
#include "vqdeploy/rng.hpp"
#include "vqdeploy/sampler.hpp"

int main(int argc, char** argv) {
  try {
    std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() == 4 && a[0] == "uniforms") {
      auto u = vqdeploy::uniform_noise(std::stoull(a[1]), 1, std::stoll(a[3]), std::stoll(a[2]));
      for (double v : u) std::printf("%.17g\n", v);
      return 0;
    }
    if (a.size() == 5 && a[0] == "sample") {
      const std::int64_t vocab = std::stoll(a[1]);
      vqdeploy::SamplingParams p;
      p.temperature = std::strtod(a[2].c_str(), nullptr);
      p.top_k = a[3] == "-" ? std::nullopt : std::optional<std::int64_t>(std::stoll(a[3]));
      p.top_p = a[4] == "-" ? std::nullopt : std::optional<double>(std::strtod(a[4].c_str(), nullptr));
      p.check();
      vqdeploy::SamplerScratch scratch;
      std::vector<float> row(static_cast<std::size_t>(vocab));
      double u = 0;
      for (;;) {
        for (auto& x : row)
          if (!(std::cin >> x)) return 0;
        if (!(std::cin >> u)) return 1;
        std::printf("%lld\n", static_cast<long long>(vqdeploy::next_token(row.data(), vocab, u, p, scratch)));
      }
    }
    std::fprintf(stderr, "usage: vqdeploy-cpp-check uniforms SEED SAMPLE STEPS | sample V T TOP_K TOP_P\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
