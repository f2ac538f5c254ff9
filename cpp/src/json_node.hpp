// Untrusted JSON (manifest.json, engines.json, scene files): read with bounds (size, nesting; no
// NaN/Infinity: strict JSON), then walked through Node, which checks each value where it is read
// and fails with one line naming the entry ("<file>: model.kind: expected ..., got ...").
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "vqdeploy/error.hpp"

namespace vqdeploy {

using Json = nlohmann::json;

constexpr std::size_t kMaxJsonBytes = 16u << 20;  // as vqdeploy.schema.MAX_JSON_BYTES
constexpr int kMaxJsonDepth = 64;

// Parse ``data`` as strict JSON (nesting <= kMaxJsonDepth); ``fail`` is called with the message
// when it is not (it must throw).
Json parse_json(const std::string& data, const std::string& label,
                const std::function<void(const std::string&)>& fail);

// ``path``'s content: a regular file (not followed when a symlink), at most ``max_bytes``.
std::string read_small_file(const std::string& path, std::size_t max_bytes, const std::string& label,
                            ErrorKind kind);

// a value in short, as in messages: "an object", "a list of 3", "\"abc\"", 12
std::string describe(const Json& v);

class Node {
 public:
  Node(const Json& value, std::string where, ErrorKind kind = ErrorKind::Artifact)
      : v_(&value), where_(std::move(where)), kind_(kind) {}

  const Json& json() const { return *v_; }
  const std::string& where() const { return where_; }

  [[noreturn]] void fail(const std::string& expected) const;
  [[noreturn]] void fail_message(const std::string& message) const;

  bool has(const std::string& key) const;
  Node at(const std::string& key) const;                   // required key of an object
  std::optional<Node> get(const std::string& key) const;  // optional key (absent or null: nullopt)
  Node item(std::size_t i) const;

  bool is_null() const { return v_->is_null(); }
  std::int64_t integer(std::int64_t lo, std::int64_t hi) const;
  double number(double lo, double hi) const;
  bool boolean() const;
  std::string string(std::size_t max_len = 256) const;
  std::string one_of(const std::vector<std::string>& values) const;
  std::size_t list(std::size_t lo, std::size_t hi) const;  // a list; its length
  std::vector<std::string> keys(std::size_t lo, std::size_t hi) const;  // an object used as a mapping

 private:
  const Json* v_;
  std::string where_;
  ErrorKind kind_;
};

// "<root> key" for the first level ("manifest.json:" + "model" -> "manifest.json: model"), "a.b" below
std::string at_path(const std::string& where, const std::string& key);

}  // namespace vqdeploy
