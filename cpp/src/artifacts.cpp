#include "artifacts.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "vqdeploy/error.hpp"

namespace vqdeploy {

namespace {

bool plain_component(const std::string& p) {  // [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
  if (p.empty() || p.size() > 128) return false;
  auto ok = [](char c, bool first) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           (!first && (c == '.' || c == '-'));
  };
  for (std::size_t i = 0; i < p.size(); ++i)
    if (!ok(p[i], i == 0)) return false;
  return true;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

std::string quoted(const std::string& s) {
  std::string t = s.size() > 80 ? s.substr(0, 80) + "..." : s;
  return "'" + t + "'";
}

}  // namespace

bool is_plain_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

void check_relative(const std::string& rel, const std::string& where) {
  if (rel.empty()) artifact_error(where + ": refused file " + quoted(rel) + ": expected a relative path");
  for (const auto& part : split(rel, '/')) {
    // plain components only: no '', '.', '..', no backslash or NUL, nothing absolute
    if (!plain_component(part) || part == "." || part == "..")
      artifact_error(where + ": refused file " + quoted(rel) +
                     ": must be a plain relative path inside the artifacts directory (no '..', no absolute path)");
  }
}

std::string join_path(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (b.empty()) return a;
  return a.back() == '/' ? a + b : a + "/" + b;
}

std::string dirname_of(const std::string& rel) {
  auto pos = rel.rfind('/');
  return pos == std::string::npos ? std::string() : rel.substr(0, pos);
}

std::string artifact_file(const std::string& root, const std::string& rel, const std::string& where, bool must_exist) {
  check_relative(rel, where);
  std::string path = root;
  auto parts = split(rel, '/');
  for (std::size_t i = 0; i < parts.size(); ++i) {
    path = join_path(path, parts[i]);
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ENOTDIR) {
        if (must_exist) artifact_error(where + ": " + path + " is missing; re-export");
        return path;
      }
      artifact_error(where + ": cannot read " + path + " (" + std::strerror(errno) + ")");
    }
    if (S_ISLNK(st.st_mode))
      artifact_error(where + ": refused " + path +
                     ": is a symlink (artifact files must be real files inside the artifacts directory)");
    bool last = i + 1 == parts.size();
    if (last && !S_ISREG(st.st_mode)) artifact_error(where + ": refused " + path + ": not a regular file");
    if (!last && !S_ISDIR(st.st_mode)) artifact_error(where + ": refused " + path + ": not a directory");
  }
  return path;
}

std::string artifact_dir(const std::string& root, const std::string& rel, const std::string& where) {
  std::string path = join_path(root, rel);
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return "";
  if (S_ISLNK(st.st_mode)) artifact_error(where + ": refused " + path + ": is a symlink");
  if (!S_ISDIR(st.st_mode)) artifact_error(where + ": refused " + path + ": not a directory");
  return path;
}

std::vector<std::uint8_t> read_file_bytes(const std::string& path, std::uint64_t max_bytes, const std::string& label) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) artifact_error(label + ": cannot read " + path + " (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    artifact_error(label + ": refused " + path + ": not a regular file");
  }
  auto size = static_cast<std::uint64_t>(st.st_size);
  if (size > max_bytes) {
    ::close(fd);
    artifact_error(label + ": " + path + " is " + std::to_string(size) + " bytes, over the limit of " +
                   std::to_string(max_bytes));
  }
  std::vector<std::uint8_t> data(static_cast<std::size_t>(size));
  std::size_t got = 0;
  while (got < data.size()) {
    ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      artifact_error(label + ": cannot read " + path + " (it changed while being read)");
    }
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return data;
}

// --- the external-data references of an ONNX file, read from its protobuf wire format -------------
namespace {

enum class Msg { Model, Graph, Node, Attribute, Function, Sparse, Tensor, Entry };

struct Span {
  const std::uint8_t* p;
  const std::uint8_t* end;
  Msg kind;
  int depth;
};

struct Reader {
  const std::uint8_t* p;
  const std::uint8_t* end;
  bool ok = true;

  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) {
        ok = false;
        return 0;
      }
      std::uint8_t b = *p++;
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    ok = false;
    return 0;
  }
  // skip a field of ``wire`` type; false when malformed
  bool skip(unsigned wire) {
    switch (wire) {
      case 0: varint(); return ok;
      case 1: if (end - p < 8) return ok = false; p += 8; return true;
      case 5: if (end - p < 4) return ok = false; p += 4; return true;
      case 2: {
        std::uint64_t n = varint();
        if (!ok || n > static_cast<std::uint64_t>(end - p)) return ok = false;
        p += n;
        return true;
      }
      default: return ok = false;  // groups (3, 4) are not used by ONNX
    }
  }
};

// which fields of a message hold sub-messages we walk
bool child(Msg kind, std::uint64_t field, Msg& out) {
  switch (kind) {
    case Msg::Model:
      if (field == 7) return out = Msg::Graph, true;
      if (field == 25) return out = Msg::Function, true;
      return false;
    case Msg::Graph:
      if (field == 1) return out = Msg::Node, true;
      if (field == 5) return out = Msg::Tensor, true;
      if (field == 15) return out = Msg::Sparse, true;
      return false;
    case Msg::Function:
      if (field == 7) return out = Msg::Node, true;
      return false;
    case Msg::Node:
      if (field == 5) return out = Msg::Attribute, true;
      return false;
    case Msg::Attribute:
      if (field == 5 || field == 10) return out = Msg::Tensor, true;
      if (field == 6 || field == 11) return out = Msg::Graph, true;
      if (field == 22 || field == 23) return out = Msg::Sparse, true;
      return false;
    case Msg::Sparse:
      if (field == 1 || field == 2) return out = Msg::Tensor, true;
      return false;
    default:
      return false;
  }
}

}  // namespace

void check_external_data(const std::vector<std::uint8_t>& onnx, const std::string& expected, const std::string& label) {
  const std::string malformed = label + ": not a readable ONNX file (malformed protobuf); re-export";
  std::vector<Span> stack{{onnx.data(), onnx.data() + onnx.size(), Msg::Model, 0}};
  while (!stack.empty()) {
    Span s = stack.back();
    stack.pop_back();
    if (s.depth > 256) artifact_error(label + ": ONNX graphs nested too deeply");
    Reader r{s.p, s.end};
    bool external = false;
    std::string location;
    bool has_location = false;
    while (r.p < r.end) {
      std::uint64_t key = r.varint();
      if (!r.ok) artifact_error(malformed);
      auto field = key >> 3;
      auto wire = static_cast<unsigned>(key & 7);
      Msg sub{};
      if (s.kind == Msg::Tensor && field == 14 && wire == 0) {
        const bool marked = r.varint() == 1;  // data_location EXTERNAL
        external = external || marked;
        if (!r.ok) artifact_error(malformed);
        continue;
      }
      if (wire == 2 && s.kind == Msg::Tensor && field == 13) {  // external_data: StringStringEntryProto
        std::uint64_t n = r.varint();
        if (!r.ok || n > static_cast<std::uint64_t>(r.end - r.p)) artifact_error(malformed);
        Reader e{r.p, r.p + n};
        r.p += n;
        external = true;
        std::string k, v;
        while (e.p < e.end) {
          std::uint64_t ek = e.varint();
          if (!e.ok) artifact_error(malformed);
          if ((ek & 7) == 2 && ((ek >> 3) == 1 || (ek >> 3) == 2)) {
            std::uint64_t m = e.varint();
            if (!e.ok || m > static_cast<std::uint64_t>(e.end - e.p)) artifact_error(malformed);
            ((ek >> 3) == 1 ? k : v).assign(reinterpret_cast<const char*>(e.p), static_cast<std::size_t>(m));
            e.p += m;
          } else if (!e.skip(static_cast<unsigned>(ek & 7))) {
            artifact_error(malformed);
          }
        }
        if (k == "location" && !has_location) {
          location = v;
          has_location = true;
        }
        continue;
      }
      if (wire == 2 && child(s.kind, field, sub)) {
        std::uint64_t n = r.varint();
        if (!r.ok || n > static_cast<std::uint64_t>(r.end - r.p)) artifact_error(malformed);
        stack.push_back({r.p, r.p + n, sub, s.depth + 1});
        r.p += n;
        continue;
      }
      if (!r.skip(wire)) artifact_error(malformed);
    }
    if (s.kind == Msg::Tensor && external) {
      std::string shown = has_location ? "'" + location.substr(0, 80) + "'" : "None";
      if (expected.empty())
        artifact_error(label + ": a tensor keeps its data in file " + shown +
                       ", but the manifest lists no external data; refused (re-export)");
      if (!has_location || location != expected)
        artifact_error(label + ": a tensor keeps its data in file " + shown + ", not in the manifest's '" + expected +
                       "'; refused (re-export)");
    }
  }
}

}  // namespace vqdeploy
