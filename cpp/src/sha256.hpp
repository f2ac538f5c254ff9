// SHA-256 of files and buffers (OpenSSL's libcrypto: the implementation Python's hashlib uses, with
// the CPU's SHA extensions where it has them; graphs and engines are hashed at every start).
#pragma once

#include <cstddef>
#include <string>

namespace vqdeploy {

std::string sha256_hex(const void* data, std::size_t size);
// the file's digest, read in chunks; ``label`` names it in the one-line error when it cannot be read
std::string sha256_file(const std::string& path, const std::string& label);

}  // namespace vqdeploy
