#include "json_node.hpp"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

namespace vqdeploy {

namespace {

// nesting depth of JSON text, strings skipped (a parser that recursed on hostile input would
// overflow the stack first)
int max_depth(const std::string& data) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : data) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') deepest = std::max(deepest, ++depth);
    else if (c == ']' || c == '}') --depth;
  }
  return deepest;
}

}  // namespace

JsonDocument::JsonDocument(const std::string& data, const std::string& label, ErrorKind kind, const std::string& suffix)
    : kind_(kind) {
  if (max_depth(data) > kMaxJsonDepth) throw Error(kind, label + ": unreadable JSON (nested too deeply)" + suffix);
  json_ = std::make_unique<Json>(Json::parse(data, nullptr, /*allow_exceptions=*/false));
  if (json_->is_discarded()) {
    std::string why = "not JSON";  // the parser's reason, once more with exceptions
    try {
      Json again = Json::parse(data);
      (void)again;
    } catch (const Json::exception& e) {
      why = e.what();
      auto pos = why.find("parse error");
      if (pos != std::string::npos) why = why.substr(pos);
      if (why.size() > 120) why = why.substr(0, 120);
    }
    throw Error(kind, label + ": unreadable JSON (" + why + ")" + suffix);
  }
}

JsonDocument::~JsonDocument() = default;

Node JsonDocument::root(const std::string& where) const { return Node(*json_, where, kind_); }

std::string read_small_file(const std::string& path, std::size_t max_bytes, const std::string& label, ErrorKind kind) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw Error(kind, label + ": cannot read it (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(kind, label + ": not a regular file");
  }
  std::string data;
  data.resize(max_bytes + 1);
  std::size_t got = 0;
  while (got < data.size()) {
    ssize_t n = ::read(fd, &data[got], data.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      throw Error(kind, label + ": cannot read it (" + std::strerror(e) + ")");
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  if (got > max_bytes) throw Error(kind, label + ": over " + std::to_string(max_bytes >> 20) + " MiB; not a vqdeploy file");
  data.resize(got);
  return data;
}

namespace {

std::string describe_value(const Json& v) {
  if (v.is_object()) return "an object";
  if (v.is_array()) return "a list of " + std::to_string(v.size());
  std::string text = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  return text.size() <= 40 ? text : text.substr(0, 37) + "...";
}

}  // namespace

std::string Node::describe() const { return describe_value(*v_); }
bool Node::is_null() const { return v_->is_null(); }
bool Node::is_object() const { return v_->is_object(); }
bool Node::is_array() const { return v_->is_array(); }
bool Node::is_string() const { return v_->is_string(); }
bool Node::is_boolean() const { return v_->is_boolean(); }
bool Node::is_number() const { return v_->is_number(); }
bool Node::is_integer() const { return v_->is_number_integer(); }
std::size_t Node::size() const { return v_->is_array() || v_->is_object() ? v_->size() : 0; }

std::vector<std::string> Node::object_keys() const {
  std::vector<std::string> out;
  if (v_->is_object())
    for (auto it = v_->begin(); it != v_->end(); ++it) out.push_back(it.key());
  return out;
}

double Node::as_double() const {
  if (!is_number()) fail("a number");
  return v_->get<double>();
}

std::optional<std::int64_t> Node::as_int64() const {
  if (v_->is_number_unsigned()) {
    auto u = v_->get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<std::int64_t>(u);
  }
  if (v_->is_number_integer()) return v_->get<std::int64_t>();
  return std::nullopt;
}

std::optional<std::string> Node::text() const {
  if (!v_->is_string()) return std::nullopt;
  return v_->get<std::string>();
}

bool Node::equals(std::int64_t x) const {
  if (v_->is_number_unsigned()) return x >= 0 && v_->get<std::uint64_t>() == static_cast<std::uint64_t>(x);
  return v_->is_number_integer() && v_->get<std::int64_t>() == x;
}

bool Node::equals(const std::string& x) const { return v_->is_string() && v_->get_ref<const std::string&>() == x; }

bool Node::equals(const std::vector<std::string>& x) const {
  if (!v_->is_array() || v_->size() != x.size()) return false;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!(*v_)[i].is_string() || (*v_)[i].get_ref<const std::string&>() != x[i]) return false;
  return true;
}

std::string at_path(const std::string& where, const std::string& key) {
  if (!where.empty() && where.back() == ':') return where + " " + key;
  return where + "." + key;
}

void Node::fail(const std::string& expected) const {
  std::string w = where_;
  while (!w.empty() && w.back() == ':') w.pop_back();
  throw Error(kind_, w + ": expected " + expected + ", got " + describe_value(*v_));
}

void Node::fail_message(const std::string& message) const {
  std::string w = where_;
  while (!w.empty() && w.back() == ':') w.pop_back();
  throw Error(kind_, w + ": " + message);
}

bool Node::has(const std::string& key) const { return v_->is_object() && v_->contains(key); }

Node Node::at(const std::string& key) const {
  if (!v_->is_object()) fail("an object");
  auto it = v_->find(key);
  if (it == v_->end()) {
    throw Error(kind_, at_path(where_, key) + ": missing" + (kind_ == ErrorKind::Artifact ? " (re-export)" : ""));
  }
  return Node(*it, at_path(where_, key), kind_);
}

std::optional<Node> Node::get(const std::string& key) const {
  if (!v_->is_object()) fail("an object");
  auto it = v_->find(key);
  if (it == v_->end() || it->is_null()) return std::nullopt;
  return Node(*it, at_path(where_, key), kind_);
}

Node Node::item(std::size_t i) const { return Node((*v_)[i], where_ + "[" + std::to_string(i) + "]", kind_); }

std::int64_t Node::integer(std::int64_t lo, std::int64_t hi) const {
  std::string what = lo == 1 ? "a positive integer (at most " + std::to_string(hi) + ")"
                             : "an integer in " + std::to_string(lo) + ".." + std::to_string(hi);
  if (v_->is_number_unsigned()) {
    auto u = v_->get<std::uint64_t>();
    if (hi < 0 || u > static_cast<std::uint64_t>(hi) || (lo > 0 && u < static_cast<std::uint64_t>(lo))) fail(what);
    return static_cast<std::int64_t>(u);
  }
  if (!v_->is_number_integer()) fail(what);
  auto x = v_->get<std::int64_t>();
  if (x < lo || x > hi) fail(what);
  return x;
}

double Node::number(double lo, double hi) const {
  if (!v_->is_number() || v_->is_boolean()) fail("a number");
  double x = v_->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) fail("a number in range");
  return x;
}

bool Node::boolean() const {
  if (!v_->is_boolean()) fail("true or false");
  return v_->get<bool>();
}

std::string Node::string(std::size_t max_len) const {
  if (!v_->is_string()) fail("a string of at most " + std::to_string(max_len) + " characters");
  const auto& s = v_->get_ref<const std::string&>();
  if (s.size() > max_len) fail("a string of at most " + std::to_string(max_len) + " characters");
  return s;
}

std::string Node::one_of(const std::vector<std::string>& values) const {
  std::string what = "one of ";
  for (std::size_t i = 0; i < values.size(); ++i) what += (i ? ", \"" : "\"") + values[i] + "\"";
  if (!v_->is_string()) fail(what);
  const auto& s = v_->get_ref<const std::string&>();
  for (const auto& x : values)
    if (s == x) return s;
  fail(what);
}

std::size_t Node::list(std::size_t lo, std::size_t hi) const {
  if (!v_->is_array() || v_->size() < lo || v_->size() > hi)
    fail("a list of " + std::to_string(lo) + ".." + std::to_string(hi) + " items");
  return v_->size();
}

std::vector<std::string> Node::keys(std::size_t lo, std::size_t hi) const {
  if (!v_->is_object() || v_->size() < lo || v_->size() > hi)
    fail("an object of " + std::to_string(lo) + ".." + std::to_string(hi) + " entries");
  std::vector<std::string> out;
  for (auto it = v_->begin(); it != v_->end(); ++it) out.push_back(it.key());
  return out;
}

}  // namespace vqdeploy
