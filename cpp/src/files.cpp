// Writing results: the rules of vqdeploy/files.py (a new temp file beside the target with O_EXCL,
// fsync, rename over the target; several files are renamed only after all are written).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "vqdeploy/error.hpp"
#include "vqdeploy/image.hpp"

namespace vqdeploy {

namespace {

std::string parent_of(const std::string& path) {
  auto pos = path.rfind('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

std::string base_of(const std::string& path) {
  auto pos = path.rfind('/');
  return pos == std::string::npos ? path : path.substr(pos + 1);
}

void make_dirs(const std::string& dir) {
  if (dir.empty() || dir == "." || dir == "/") return;
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) input_error("--out: cannot create " + dir + ": not a directory");
    return;
  }
  make_dirs(parent_of(dir));
  if (::mkdir(dir.c_str(), 0777) != 0 && errno != EEXIST)
    input_error("--out: cannot create " + dir + " (" + std::strerror(errno) + ")");
}

}  // namespace

void check_writable(const std::string& directory, const std::string& what) {
  std::string probe_dir = directory.empty() ? "." : directory;
  struct stat st {};
  while (::lstat(probe_dir.c_str(), &st) != 0 && probe_dir != "/" && probe_dir != ".") probe_dir = parent_of(probe_dir);
  if (::stat(probe_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    input_error(what + ": cannot create " + directory + ": " + probe_dir + " is not a directory");
  std::string tmpl = probe_dir + "/.vqdeploy-probe-XXXXXX";
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  int fd = ::mkstemp(name.data());
  if (fd < 0) input_error(what + ": cannot write to " + probe_dir + " (" + std::strerror(errno) + ")");
  ::close(fd);
  ::unlink(name.data());
}

void write_files_atomically(const std::vector<std::pair<std::string, std::vector<std::uint8_t>>>& files) {
  for (const auto& [path, data] : files) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) input_error("cannot write " + path + ": it is a directory");
  }
  std::vector<std::pair<std::string, std::string>> temps;  // (temp, target)
  auto cleanup = [&temps]() {
    for (const auto& t : temps) ::unlink(t.first.c_str());
  };
  mode_t umask_now = ::umask(0);
  ::umask(umask_now);
  for (const auto& [path, data] : files) {
    std::string dir = parent_of(path);
    make_dirs(dir);
    std::string tmpl = dir + "/." + base_of(path) + ".XXXXXX";
    std::vector<char> name(tmpl.begin(), tmpl.end());
    name.push_back('\0');
    int fd = ::mkstemp(name.data());  // O_CREAT | O_EXCL: never an existing path or a planted symlink
    if (fd < 0) {
      cleanup();
      input_error("cannot write " + path + " (" + std::strerror(errno) + ")");
    }
    temps.emplace_back(name.data(), path);
    ::fchmod(fd, 0666 & ~umask_now);
    std::size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::write(fd, data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int e = errno;
        ::close(fd);
        cleanup();
        input_error("cannot write " + path + " (" + std::strerror(e) + ")");
      }
      done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
      cleanup();
      input_error("cannot write " + path + " (" + std::strerror(errno) + ")");
    }
  }
  for (const auto& [tmp, path] : temps) {
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      int e = errno;
      cleanup();
      input_error("cannot write " + path + " (" + std::strerror(e) + ")");
    }
  }
}

void write_png(const std::string& path, const Image& image) { write_files_atomically({{path, encode_png(image)}}); }

}  // namespace vqdeploy
