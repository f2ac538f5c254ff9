// Files that an artifacts directory names (manifest.json, engines.json): the rules of
// vqdeploy/artifact_paths.py. A relative, normalized path of plain components inside the directory,
// no symlink in any component, a regular file; names are plain identifiers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vqdeploy {

bool is_plain_name(const std::string& name);  // [A-Za-z_][A-Za-z0-9_]{0,63}
// ``rel`` checked (Artifact error naming ``where`` otherwise)
void check_relative(const std::string& rel, const std::string& where);
// root/rel, every component checked with lstat; with must_exist the last is a regular file
std::string artifact_file(const std::string& root, const std::string& rel, const std::string& where,
                          bool must_exist = true);
// a directory inside root that is no symlink ("" when it does not exist)
std::string artifact_dir(const std::string& root, const std::string& rel, const std::string& where);

// The whole content of a checked regular file (opened without following a symlink), at most max_bytes.
std::vector<std::uint8_t> read_file_bytes(const std::string& path, std::uint64_t max_bytes, const std::string& label);

// Every tensor stored outside ``onnx`` (a serialized ModelProto) names ``expected`` as its location
// ("" : none may); Artifact error otherwise. Walks the graph, its subgraphs and functions.
void check_external_data(const std::vector<std::uint8_t>& onnx, const std::string& expected, const std::string& label);

std::string join_path(const std::string& a, const std::string& b);
std::string dirname_of(const std::string& rel);  // "a/b.onnx" -> "a", "b.onnx" -> ""

}  // namespace vqdeploy
