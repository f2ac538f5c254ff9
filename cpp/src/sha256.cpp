#include "sha256.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include <openssl/evp.h>

#include "vqdeploy/error.hpp"

namespace vqdeploy {

namespace {

struct Digest {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx{EVP_MD_CTX_new(), EVP_MD_CTX_free};

  Digest() {
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) backend_error("OpenSSL: cannot start a sha256");
  }
  void update(const void* p, std::size_t n) {
    if (n && EVP_DigestUpdate(ctx.get(), p, n) != 1) backend_error("OpenSSL: sha256 update failed");
  }
  std::string hex() {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx.get(), out, &len) != 1) backend_error("OpenSSL: sha256 final failed");
    static const char* digits = "0123456789abcdef";
    std::string s;
    for (unsigned int i = 0; i < len; ++i) {
      s += digits[out[i] >> 4];
      s += digits[out[i] & 15];
    }
    return s;
  }
};

}  // namespace

std::string sha256_hex(const void* data, std::size_t size) {
  Digest d;
  d.update(data, size);
  return d.hex();
}

std::string sha256_file(const std::string& path, const std::string& label) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) artifact_error(label + ": cannot read " + path + " (" + std::strerror(errno) + ")");
  Digest d;
  std::vector<char> buf(1 << 22);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      artifact_error(label + ": cannot read " + path + " (" + std::strerror(e) + ")");
    }
    if (n == 0) break;
    d.update(buf.data(), static_cast<std::size_t>(n));
  }
  ::close(fd);
  return d.hex();
}

}  // namespace vqdeploy
