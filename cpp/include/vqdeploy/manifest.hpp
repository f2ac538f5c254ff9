// manifest.json as typed values: what the C++ runtime reads of an artifacts directory, checked
// before anything indexes it (the same structure and bounds as vqdeploy/export/manifest_schema.py,
// and the same consistency checks between fields). Nothing here is hard-coded about a model:
// grids, vocabularies, tensor names and shapes, the permuter's order, the conditioning rule and the
// noise generator all come from the file.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace vqdeploy {

enum class DType { Float32, Float16, BFloat16, Int64 };
const char* dtype_name(DType t);
std::size_t dtype_size(DType t);

// one extent of a tensor shape: a fixed size, or a dim expression ("batch", "latent_h*8", "past+tokens")
struct Extent {
  std::int64_t fixed = -1;  // >= 0: fixed size
  std::string expr;         // otherwise

  bool is_fixed() const { return fixed >= 0; }
};

struct TensorSpec {
  std::string name;
  DType dtype = DType::Float32;
  std::vector<Extent> shape;
};

struct DimRange {
  std::int64_t min = 0, opt = 0, max = 0, scale = 1;
};

struct GraphSpec {
  std::string name;
  std::string file;                 // relative to the artifacts directory
  std::string sha256;
  std::optional<std::string> external_data_file;  // a plain name beside the graph
  std::optional<std::string> external_data_sha256;
  std::vector<TensorSpec> inputs, outputs;
  std::map<std::string, DimRange> dims;
  // profile name -> dim -> (min, opt, max), in the manifest's order
  std::vector<std::pair<std::string, std::map<std::string, std::vector<std::int64_t>>>> profiles;

  const TensorSpec* input(const std::string& n) const;
  const TensorSpec* output(const std::string& n) const;
};

struct VQStage {
  std::int64_t in_channels = 0, out_channels = 0, resolution = 0, downsample_factor = 0, vocab_size = 0;
  std::int64_t latent_h = 0, latent_w = 0;
};

struct TransformerInfo {
  std::int64_t vocab_size = 0, block_size = 0, n_layer = 0, n_head = 0, head_dim = 0;
};

// upstream's objects builders (model.conditioning.builder); the rule is model.conditioning.rule
struct LayoutBuilderSpec {
  std::string name;  // objects_bbox | objects_center_points
  std::int64_t no_object_classes = 0, no_max_objects = 0, no_tokens = 0;
  bool encode_crop = false, use_group_parameter = false, use_additional_parameters = false;
};

struct Conditioning {
  std::string kind;  // image | first_stage | class | sos | coord | objects
  std::int64_t tokens = 0;
  // image, first_stage, coord: the condition's grid
  std::int64_t resolution = 0, factor = 0, latent_h = 0, latent_w = 0;
  // image, first_stage
  std::int64_t in_channels = 0, downsample_cond_size = -1;
  std::string preprocessing;  // onehot | grey | rgb
  std::int64_t num_classes = 0;
  bool light_background = false;
  std::string input_help;
  // class
  std::int64_t n_classes = 0;
  std::optional<std::int64_t> null_class;  // the null class of classifier-free guidance (LlamaGen); none: no guidance
  // sos
  std::int64_t sos_token = 0;
  // coord
  std::int64_t n_embed = 0;
  // objects
  LayoutBuilderSpec builder;
  std::optional<std::string> dataset;
  std::vector<std::string> categories;  // category number -> name, where known
  std::string rule;

  // the graph that encodes the condition ("" when none)
  std::string encoder_graph() const;
};

struct Manifest {
  std::string directory;
  std::string label;  // "<dir>/manifest.json" in messages
  std::string kind;   // vqgan | net2net
  std::string family = "taming";  // model.family: taming (also when absent) | llamagen
  VQStage first_stage;
  Conditioning conditioning;
  TransformerInfo transformer;
  std::optional<std::vector<std::int64_t>> order;  // permuter: sequence position k holds raster cell order[k]
  std::string permuter;
  std::int64_t cond_tokens = 0, image_tokens = 0;
  std::string precision;
  std::int64_t max_batch = 0;
  std::string fingerprint;
  std::map<std::string, GraphSpec> graphs;
  bool states_noise_generator = false;  // sampling.noise_generator names the generator this runtime implements

  const GraphSpec& graph(const std::string& name) const;
  bool has_graph(const std::string& name) const { return graphs.count(name) != 0; }
};

// The manifest of an artifacts directory, validated; vqdeploy::Error (Artifact) naming the entry otherwise.
Manifest read_manifest(const std::string& directory);

// Evaluate a dim expression ("latent_h*8", "past+tokens") against bound dims.
std::int64_t eval_dim(const std::string& expr, const std::map<std::string, std::int64_t>& dims);

}  // namespace vqdeploy
