#ifdef VQDEPLOY_WITH_CUDA
#include "cuda_memory.hpp"

#include "vqdeploy/error.hpp"

namespace vqdeploy {

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) backend_error(std::string("CUDA: ") + what + " failed (" + cudaGetErrorString(e) + ")");
}

CudaMemory::CudaMemory(int device) : device_(device) {
  cuda_check(cudaSetDevice(device), "cudaSetDevice");
  cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
}

CudaMemory::~CudaMemory() {
  if (stream_) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
}

void* CudaMemory::allocate(std::size_t bytes) {
  void* p = nullptr;
  cuda_check(cudaMalloc(&p, bytes), "cudaMalloc (out of GPU memory?)");
  cuda_check(cudaMemsetAsync(p, 0, bytes, stream_), "cudaMemsetAsync");
  return p;
}

void CudaMemory::release(void* p) noexcept {
  cudaStreamSynchronize(stream_);  // work enqueued on the stream may still use it
  cudaFree(p);
}

void CudaMemory::upload(void* dst, const void* src, std::size_t bytes) {
  cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
}

void CudaMemory::download(void* dst, const void* src, std::size_t bytes) {
  cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
  cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

void CudaMemory::copy(void* dst, const void* src, std::size_t bytes) {
  cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "cudaMemcpyAsync");
}

std::string CudaMemory::name() const {
  cudaDeviceProp prop{};
  cuda_check(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
  return prop.name;
}

std::string CudaMemory::compute_capability() const {
  int major = 0, minor = 0;
  cuda_check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_), "cudaDeviceGetAttribute");
  cuda_check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device_), "cudaDeviceGetAttribute");
  return std::to_string(major) + "." + std::to_string(minor);
}

}  // namespace vqdeploy
#endif
