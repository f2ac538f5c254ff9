// Errors of the vqdeploy C++ runtime: every refusal is one vqdeploy::Error whose message is a
// single line, the same kinds as the Python package (bad input, bad artifacts, a runtime that
// cannot run). vqdeploy-cpp prints it as "error: <message>" and exits non-zero.
#pragma once

#include <stdexcept>
#include <string>

namespace vqdeploy {

enum class ErrorKind {
  Input,     // a bad condition file, class id, option value
  Artifact,  // missing, foreign, tampered or inconsistent artifacts / engines
  Backend,   // a runtime (ONNX Runtime, TensorRT, CUDA) that is missing or cannot run here
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] inline void input_error(const std::string& message) { throw Error(ErrorKind::Input, message); }
[[noreturn]] inline void artifact_error(const std::string& message) { throw Error(ErrorKind::Artifact, message); }
[[noreturn]] inline void backend_error(const std::string& message) { throw Error(ErrorKind::Backend, message); }

}  // namespace vqdeploy
