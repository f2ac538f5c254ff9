// Untrusted JSON (manifest.json, engines.json, scene files): parsed with bounds (size, nesting; strict
// JSON: no NaN/Infinity), then walked through Node, which checks each value where it is read and
// fails with one line naming the entry ("<file>: model.kind: expected ..., got ..."). nlohmann-json
// stays inside json_node.cpp (its header is the costliest part of a build).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "vqdeploy/error.hpp"

namespace vqdeploy {

using Json = nlohmann::json;

constexpr std::size_t kMaxJsonBytes = 16u << 20;  // as vqdeploy.schema.MAX_JSON_BYTES
constexpr int kMaxJsonDepth = 64;

// ``path``'s content: a regular file (not followed when a symlink), at most ``max_bytes``.
std::string read_small_file(const std::string& path, std::size_t max_bytes, const std::string& label,
                            ErrorKind kind);

class Node;

class JsonDocument {
 public:
  // strict JSON, nesting <= kMaxJsonDepth; else Error(kind): "<label>: unreadable JSON (...)<suffix>"
  JsonDocument(const std::string& data, const std::string& label, ErrorKind kind, const std::string& suffix = "");
  ~JsonDocument();
  JsonDocument(const JsonDocument&) = delete;
  JsonDocument& operator=(const JsonDocument&) = delete;
  Node root(const std::string& where) const;

 private:
  std::unique_ptr<Json> json_;
  ErrorKind kind_;
};

class Node {
 public:
  Node(const Json& value, std::string where, ErrorKind kind) : v_(&value), where_(std::move(where)), kind_(kind) {}

  const std::string& where() const { return where_; }
  [[noreturn]] void fail(const std::string& expected) const;  // "<where>: expected <what>, got <value>"
  [[noreturn]] void fail_message(const std::string& message) const;

  // what it is
  bool is_null() const;
  bool is_object() const;
  bool is_array() const;
  bool is_string() const;
  bool is_boolean() const;
  bool is_number() const;   // an integer or a float, not a boolean
  bool is_integer() const;  // an integer (signed or unsigned)
  std::size_t size() const;  // items of a list, entries of an object
  std::string describe() const;  // the value in short, as in messages

  // navigation
  bool has(const std::string& key) const;
  Node at(const std::string& key) const;                   // a required key of an object
  std::optional<Node> get(const std::string& key) const;  // an optional key (absent or null: nullopt)
  Node item(std::size_t i) const;
  std::vector<std::string> object_keys() const;  // an object's keys, sorted

  // checked values
  std::int64_t integer(std::int64_t lo, std::int64_t hi) const;
  double number(double lo, double hi) const;
  double as_double() const;                       // any number
  std::optional<std::int64_t> as_int64() const;  // an integer that fits int64
  std::optional<std::string> text() const;        // the string, when it is one
  bool boolean() const;
  std::string string(std::size_t max_len = 256) const;
  std::string one_of(const std::vector<std::string>& values) const;
  std::size_t list(std::size_t lo, std::size_t hi) const;  // a list; its length
  std::vector<std::string> keys(std::size_t lo, std::size_t hi) const;  // an object used as a mapping
  bool equals(std::int64_t v) const;
  bool equals(const std::string& v) const;
  bool equals(const std::vector<std::string>& v) const;  // a list of exactly these strings

 private:
  const Json* v_;
  std::string where_;
  ErrorKind kind_;
};

// "<root> key" for the first level ("manifest.json:" + "model" -> "manifest.json: model"), "a.b" below
std::string at_path(const std::string& where, const std::string& key);

}  // namespace vqdeploy
