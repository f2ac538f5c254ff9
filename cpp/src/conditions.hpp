// The condition of a request -> condition tokens, for each conditioning kind the manifest names
// (vqdeploy/conditions/*): an image for the cond encoder graph (image, first_stage), a class id,
// the start-of-sequence token (sos), the coordinate map (coord), a scene file (objects).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "host_tensor.hpp"
#include "vqdeploy/manifest.hpp"

namespace vqdeploy {

class Graphs;

using Log = std::function<void(const std::string&)>;

struct ConditionInput {
  bool encode = false;              // true: ``tensor`` goes through the manifest's encoder graph
  HostTensor tensor;                // (1,C,H,W) float32 or (1,H,W) int64 labels
  std::vector<std::int64_t> tokens;  // otherwise: the condition tokens of one sample
};

// ``--class`` against the model (Input error with Python's wording).
void check_class(const Conditioning& c, const std::optional<std::int64_t>& class_id);

// Read INPUT (or its absence) as the model's conditioning kind wants it, at the trained size.
ConditionInput read_condition(const Manifest& m, const std::optional<std::string>& input,
                              const std::optional<std::int64_t>& class_id, const Log& log);

// (batch, n) condition tokens (one row repeated for every sample)
std::vector<std::int64_t> condition_tokens(Graphs& graphs, const Manifest& m, const ConditionInput& in,
                                           std::int64_t batch);

// A scene file -> the tokens of upstream's objects builder (model.conditioning.builder; the rule in
// model.conditioning.rule), as vqdeploy/conditions/objects.py and layout_builder.py.
std::vector<std::int64_t> scene_tokens(const Conditioning& c, const std::string& path, const Log& log);

}  // namespace vqdeploy
