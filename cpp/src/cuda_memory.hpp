// Device memory and one stream (CUDA runtime API), for the TensorRT backend and ONNX Runtime on CUDA.
#pragma once

#ifdef VQDEPLOY_WITH_CUDA
#include <cuda_runtime_api.h>

#include <string>

#include "backend.hpp"

namespace vqdeploy {

void cuda_check(cudaError_t e, const char* what);

class CudaMemory : public Memory {
 public:
  explicit CudaMemory(int device);
  ~CudaMemory() override;
  bool on_device() const override { return true; }
  void* allocate(std::size_t bytes) override;
  void release(void* p) noexcept override;
  void upload(void* dst, const void* src, std::size_t bytes) override;
  void download(void* dst, const void* src, std::size_t bytes) override;
  void copy(void* dst, const void* src, std::size_t bytes) override;
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }
  std::string name() const;
  std::string compute_capability() const;  // "8.6"

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
};

}  // namespace vqdeploy
#endif
