// A tensor in host memory (what graphs take from and give back to the host).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "vqdeploy/manifest.hpp"

namespace vqdeploy {

inline std::int64_t element_count(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

struct HostTensor {
  DType dtype = DType::Float32;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> data;

  HostTensor() = default;
  HostTensor(DType t, std::vector<std::int64_t> s) : dtype(t), shape(std::move(s)) {
    data.resize(static_cast<std::size_t>(element_count(shape)) * dtype_size(dtype));
  }
  std::size_t bytes() const { return data.size(); }
  template <typename T>
  T* as() { return reinterpret_cast<T*>(data.data()); }
  template <typename T>
  const T* as() const { return reinterpret_cast<const T*>(data.data()); }
};

}  // namespace vqdeploy
