// manifest.json: structure and bounds as vqdeploy/export/manifest_schema.py (MANIFEST), then the
// consistency checks (CONSISTENCY) and each conditioning kind's own (vqdeploy/conditions/*).
#include "vqdeploy/manifest.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include <sys/stat.h>

#include "artifacts.hpp"
#include "json_node.hpp"

namespace vqdeploy {

namespace {

constexpr std::int64_t kMaxVocab = 1 << 24;
constexpr std::int64_t kMaxBlock = 1 << 16;
constexpr std::int64_t kMaxGrid = 1024;
constexpr std::int64_t kMaxResolution = 16384;
constexpr std::int64_t kMaxFactor = 1024;
constexpr std::int64_t kMaxChannels = 1024;
constexpr std::int64_t kMaxLayers = 1024;
constexpr std::int64_t kMaxHeads = 1024;
constexpr std::int64_t kMaxHeadDim = 8192;
constexpr std::int64_t kMaxBatch = 1024;
constexpr std::int64_t kMaxDim = 1 << 20;
constexpr std::size_t kMaxRank = 8;
constexpr std::size_t kMaxGraphs = 32;
constexpr std::size_t kMaxTensors = 2 * kMaxLayers + 8;
constexpr const char* kFormat = "vqdeploy-artifacts";
constexpr std::int64_t kFormatVersion = 3;  // 3: one transformer position per row

[[noreturn]] void require_fail(const std::string& where, const std::string& message) {
  artifact_error(where + ": " + message + " (re-export)");
}
void require(bool ok, const std::string& where, const std::string& message) {
  if (!ok) require_fail(where, message);
}

bool name_char(char c, bool first) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || (!first && c >= '0' && c <= '9');
}

// "name" or "name*k" (k 1..9999); the dim name into ``dim``, the factor into ``scale``
bool parse_term(const std::string& t, std::string& dim, std::int64_t& scale) {
  auto star = t.find('*');
  dim = t.substr(0, star);
  scale = 1;
  if (!is_plain_name(dim)) return false;
  if (star == std::string::npos) return true;
  std::string k = t.substr(star + 1);
  if (k.empty() || k.size() > 4 || k[0] < '1' || k[0] > '9') return false;
  for (char c : k)
    if (c < '0' || c > '9') return false;
  scale = std::stoll(k);
  return true;
}

std::vector<std::string> split_plus(const std::string& e) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    auto pos = e.find('+', start);
    out.push_back(e.substr(start, pos - start));
    if (pos == std::string::npos) return out;
    start = pos + 1;
  }
}

bool valid_expr(const std::string& e) {
  std::string d;
  std::int64_t k;
  for (const auto& t : split_plus(e))
    if (!parse_term(t, d, k)) return false;
  return true;
}

std::string sha256_of(const Node& n) {
  const std::optional<std::string> v = n.text();
  bool ok = v && v->size() == 64;
  if (ok)
    for (char c : *v) ok = ok && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  if (!ok) n.fail("a sha256 (64 lowercase hex digits)");
  return *v;
}

std::string tensor_name(const Node& n) {
  std::string s = n.string(128);
  bool ok = !s.empty() && name_char(s[0], true);
  for (char c : s) ok = ok && (name_char(c, false) || c == '.');
  if (!ok) n.fail("a tensor name");
  return s;
}

DType parse_dtype(const Node& n) {
  std::string s = n.one_of({"float32", "float16", "bfloat16", "int64"});
  if (s == "float32") return DType::Float32;
  if (s == "float16") return DType::Float16;
  if (s == "bfloat16") return DType::BFloat16;
  return DType::Int64;
}

TensorSpec parse_tensor(const Node& n) {
  TensorSpec t;
  t.name = tensor_name(n.at("name"));
  t.dtype = parse_dtype(n.at("dtype"));
  Node shape = n.at("shape");
  std::size_t rank = shape.list(0, kMaxRank);
  for (std::size_t i = 0; i < rank; ++i) {
    Node e = shape.item(i);
    Extent x;
    if (e.is_string()) {
      x.expr = *e.text();
      if (!valid_expr(x.expr)) e.fail("a size or a dim expression such as 'batch', 'latent_h*8', 'past+tokens'");
    } else {
      x.fixed = e.integer(0, kMaxDim);
    }
    t.shape.push_back(x);
  }
  return t;
}

std::vector<std::int64_t> grid(const Node& n) {
  n.list(2, 2);
  return {n.item(0).integer(1, kMaxGrid), n.item(1).integer(1, kMaxGrid)};
}

GraphSpec parse_graph(const std::string& name, const Node& n) {
  GraphSpec g;
  g.name = name;
  Node file = n.at("file");
  g.file = file.string(4096);
  check_relative(g.file, file.where());
  g.sha256 = sha256_of(n.at("sha256"));
  for (auto [key, out] : {std::pair<const char*, std::vector<TensorSpec>*>{"inputs", &g.inputs}, {"outputs", &g.outputs}}) {
    Node list = n.at(key);
    std::size_t count = list.list(1, kMaxTensors);
    for (std::size_t i = 0; i < count; ++i) out->push_back(parse_tensor(list.item(i)));
  }
  Node dims = n.at("dims");
  for (const auto& d : dims.keys(1, 64)) {
    if (!is_plain_name(d)) artifact_error(dims.where() + ": refused name '" + d.substr(0, 64) + "': expected a plain identifier (letters, digits, _)");
    Node r = dims.at(d);
    DimRange x;
    x.min = r.at("min").integer(0, kMaxDim);
    x.opt = r.at("opt").integer(0, kMaxDim);
    x.max = r.at("max").integer(0, kMaxDim);
    if (auto s = r.get("scale")) x.scale = s->integer(1, kMaxFactor);
    if (!(x.min <= x.opt && x.opt <= x.max)) r.fail("min <= opt <= max");
    g.dims[d] = x;
  }
  Node profiles = n.at("profiles");
  for (const auto& p : profiles.keys(1, 16)) {
    if (!is_plain_name(p)) artifact_error(profiles.where() + ": refused name '" + p.substr(0, 64) + "': expected a plain identifier (letters, digits, _)");
    Node prof = profiles.at(p);
    std::map<std::string, std::vector<std::int64_t>> ranges;
    for (const auto& d : prof.keys(0, 64)) {
      if (!is_plain_name(d)) artifact_error(prof.where() + ": refused name '" + d.substr(0, 64) + "': expected a plain identifier (letters, digits, _)");
      Node r = prof.at(d);
      r.list(3, 3);
      std::vector<std::int64_t> v{r.item(0).integer(0, kMaxDim), r.item(1).integer(0, kMaxDim), r.item(2).integer(0, kMaxDim)};
      if (!(v[0] <= v[1] && v[1] <= v[2])) r.fail("min <= opt <= max");
      ranges[d] = v;
    }
    g.profiles.emplace_back(p, ranges);
  }
  if (auto ext = n.get("external_data")) {
    Node f = ext->at("file");
    std::string rel = f.string(4096);
    check_relative(rel, f.where());
    if (rel.find('/') != std::string::npos) f.fail("a file name in the same directory");
    g.external_data_file = rel;
    g.external_data_sha256 = sha256_of(ext->at("sha256"));
  }
  return g;
}

VQStage parse_vq(const Node& n, bool out_channels) {
  VQStage s;
  s.in_channels = n.at("in_channels").integer(1, kMaxChannels);
  s.resolution = n.at("resolution").integer(1, kMaxResolution);
  s.downsample_factor = n.at("downsample_factor").integer(1, kMaxFactor);
  auto g = grid(n.at("latent_grid"));
  s.latent_h = g[0];
  s.latent_w = g[1];
  s.vocab_size = n.at("vocab_size").integer(1, kMaxVocab);
  if (out_channels) s.out_channels = n.at("out_channels").integer(1, kMaxChannels);
  return s;
}

// GridCondition.from_manifest: the grid follows resolution // factor; tokens = h * w
void check_grid(const Conditioning& c, const std::string& where, const char* factor_key) {
  std::int64_t side = c.resolution / c.factor;
  require(c.latent_h == side && c.latent_w == side, where + ".latent_grid",
          "[" + std::to_string(c.latent_h) + ", " + std::to_string(c.latent_w) + "] does not match resolution " +
              std::to_string(c.resolution) + " // " + factor_key + " " + std::to_string(c.factor));
  require(c.tokens == c.latent_h * c.latent_w, where + ".tokens",
          std::to_string(c.tokens) + " is not " + std::to_string(c.latent_h) + "x" + std::to_string(c.latent_w));
}

Conditioning parse_conditioning(const Node& n, std::int64_t vocab) {
  Conditioning c;
  const std::string where = n.where();
  c.kind = n.at("kind").one_of({"image", "first_stage", "class", "sos", "coord", "objects"});
  if (c.kind == "image" || c.kind == "first_stage") {
    VQStage vq = parse_vq(n, false);
    c.in_channels = vq.in_channels;
    c.resolution = vq.resolution;
    c.factor = vq.downsample_factor;
    c.latent_h = vq.latent_h;
    c.latent_w = vq.latent_w;
    c.tokens = n.at("tokens").integer(1, kMaxBlock);
    Node pre = n.at("preprocessing");
    c.preprocessing = pre.at("kind").one_of({"onehot", "grey", "rgb"});
    if (c.preprocessing == "onehot") {
      c.num_classes = pre.at("num_classes").integer(1, kMaxChannels);
      require(c.num_classes == c.in_channels, where + ".preprocessing.num_classes",
              "differs from model.conditioning.in_channels");
    }
    if (auto bg = pre.get("background")) c.light_background = bg->equals(std::string("light"));
    if (auto in = pre.get("input"); in && in->is_string()) c.input_help = in->text()->substr(0, 256);
    if (auto k = n.get("key")) k->string(64);
    if (auto d = n.get("downsample_cond_size")) c.downsample_cond_size = d->integer(-1, kMaxResolution);
    check_grid(c, where, "downsample_factor");
  } else if (c.kind == "class") {
    c.n_classes = n.at("n_classes").integer(1, kMaxVocab);
    Node t = n.at("tokens");
    if (!t.equals(std::int64_t(1))) t.fail("one of 1");
    c.tokens = 1;
    require(c.n_classes <= vocab, where + ".n_classes", "over the vocabulary " + std::to_string(vocab));
    if (auto null = n.get("null_class")) {  // the class a guided sample's second row is conditioned on (LlamaGen)
      c.null_class = null->integer(1, kMaxVocab);
      require(*c.null_class >= c.n_classes, where + ".null_class",
              std::to_string(*c.null_class) + " is one of the " + std::to_string(c.n_classes) + " classes");
    }
  } else if (c.kind == "sos") {
    c.sos_token = n.at("sos_token").integer(0, kMaxVocab - 1);
    Node t = n.at("tokens");
    if (!t.equals(std::int64_t(1))) t.fail("one of 1");
    c.tokens = 1;
    require(c.sos_token < vocab, where + ".sos_token", "not below the vocabulary " + std::to_string(vocab));
  } else if (c.kind == "coord") {
    c.n_embed = n.at("n_embed").integer(1, kMaxVocab);
    c.factor = n.at("down_factor").integer(1, kMaxFactor);
    c.resolution = n.at("resolution").integer(1, kMaxResolution);
    auto g = grid(n.at("latent_grid"));
    c.latent_h = g[0];
    c.latent_w = g[1];
    c.tokens = n.at("tokens").integer(1, kMaxBlock);
    check_grid(c, where, "down_factor");
  } else {  // objects
    std::string key = n.at("key").one_of({"objects_bbox", "objects_center_points"});
    c.tokens = n.at("tokens").integer(1, kMaxBlock);
    Node b = n.at("builder");
    LayoutBuilderSpec& s = c.builder;
    s.name = b.at("name").one_of({"objects_bbox", "objects_center_points"});
    s.no_object_classes = b.at("no_object_classes").integer(1, kMaxVocab);
    s.no_max_objects = b.at("no_max_objects").integer(1, 4096);
    s.no_tokens = b.at("no_tokens").integer(4, kMaxVocab);
    s.encode_crop = b.at("encode_crop").boolean();
    s.use_group_parameter = b.at("use_group_parameter").boolean();
    s.use_additional_parameters = b.at("use_additional_parameters").boolean();
    (void)key;
    if (auto d = n.get("dataset")) c.dataset = d->string(64);
    if (auto cats = n.get("categories")) {
      std::size_t count = cats->list(1, 4096);
      for (std::size_t i = 0; i < count; ++i) c.categories.push_back(cats->item(i).string(128));
    }
    if (auto r = n.get("rule"); r && r->is_string()) c.rule = *r->text();
    // ObjectLayout.check: the ids with their modifiers fit no_tokens, and the token count is the builder's
    std::int64_t modifier = (s.use_additional_parameters ? (8 | 4 | 2) : 0) | (s.use_group_parameter ? 1 : 0);
    std::int64_t top = s.no_object_classes * (modifier + 1) - 1;
    require(top < s.no_tokens, where,
            s.name + " builder: " + std::to_string(s.no_object_classes) +
                " classes with their modifiers need tokens up to " + std::to_string(top) + ", over no_tokens " +
                std::to_string(s.no_tokens));
    std::int64_t per = s.name == "objects_bbox" ? 3 : 2;
    std::int64_t tokens = s.no_max_objects * per + (s.encode_crop ? 2 : 0);
    require(tokens == c.tokens, where + ".tokens",
            std::to_string(c.tokens) + " is not the builder's " + std::to_string(tokens));
    require(s.no_tokens <= vocab, where + ".builder.no_tokens", "over the vocabulary " + std::to_string(vocab));
    // what the builder's derived numbers say, where the manifest states them
    if (auto ns = b.get("no_sections"))
      require(ns->equals(static_cast<std::int64_t>(std::sqrt(static_cast<double>(s.no_tokens)))), ns->where(),
              "not floor(sqrt(no_tokens))");
    if (auto none = b.get("none_token")) require(none->equals(s.no_tokens - 1), none->where(), "not no_tokens - 1");
    if (auto desc = b.get("descriptor")) {
      const std::vector<std::string> want = s.name == "objects_bbox"
                                                ? std::vector<std::string>{"object", "point(x0,y0)", "point(x0+w,y0+h)"}
                                                : std::vector<std::string>{"object", "point(x0+w/2,y0+h/2)"};
      require(desc->equals(want), desc->where(), "not the " + s.name + " descriptor this runtime builds");
    }
  }
  return c;
}

void check_stage_io(const Manifest& m) {
  struct Want {
    const char* graph;
    bool input;
    const char* name;
    DType dtype;
    std::size_t rank;
  };
  static const Want kStageIO[] = {
      {"encoder", true, "image", DType::Float32, 4},         {"encoder", false, "indices", DType::Int64, 3},
      {"decoder", true, "indices", DType::Int64, 3},         {"decoder", false, "image", DType::Float32, 4},
      {"cond_encoder", false, "indices", DType::Int64, 3},   {"transformer", true, "tokens", DType::Int64, 2},
      {"transformer", false, "logits", DType::Float32, 3},   {"sampler", true, "logits", DType::Float32, 3},
      {"sampler", true, "uniform", DType::Float32, 1},       {"sampler", true, "temperature", DType::Float32, 1},
      {"sampler", true, "top_k", DType::Int64, 1},           {"sampler", true, "top_p", DType::Float32, 1},
      {"sampler", false, "tokens", DType::Int64, 2},
  };
  const std::string root = m.label + ":";
  for (const auto& w : kStageIO) {
    auto it = m.graphs.find(w.graph);
    if (it == m.graphs.end()) continue;
    const TensorSpec* t = w.input ? it->second.input(w.name) : it->second.output(w.name);
    require(t && t->dtype == w.dtype && t->shape.size() == w.rank,
            at_path(root, std::string("graphs.") + w.graph + (w.input ? ".inputs" : ".outputs")),
            std::string("expected '") + w.name + "' " + dtype_name(w.dtype) + " of rank " + std::to_string(w.rank));
  }
  if (m.has_graph("cond_encoder")) {
    const auto& ins = m.graph("cond_encoder").inputs;
    require(ins.size() == 1 && (ins[0].dtype == DType::Float32 || ins[0].dtype == DType::Int64) &&
                (ins[0].shape.size() == 3 || ins[0].shape.size() == 4),
            at_path(root, "graphs.cond_encoder.inputs"), "expected one float32 image or int64 label input");
  }
}

void check_graph_dims(const Manifest& m) {
  const std::string root = m.label + ":";
  for (const auto& [name, g] : m.graphs) {
    const std::string where = at_path(root, "graphs." + name);
    std::set<std::string> bound;
    for (std::size_t i = 0; i < g.inputs.size(); ++i) {
      for (const auto& e : g.inputs[i].shape) {
        if (e.is_fixed()) continue;
        std::string d;
        std::int64_t k;
        require(parse_term(e.expr, d, k), where + ".inputs[" + std::to_string(i) + "].shape",
                "'" + e.expr + "' is not a dim or dim*k");
        bound.insert(d);
      }
    }
    require(g.dims.count("batch") != 0, where + ".dims", "no batch range");
    require(g.dims.at("batch").max <= kMaxBatch, where + ".dims.batch.max", "over " + std::to_string(kMaxBatch));
    for (const auto& d : bound) {
      require(g.dims.count(d) != 0, where + ".dims", "no range for dim '" + d + "'");
      for (const auto& [p, ranges] : g.profiles)
        require(ranges.count(d) != 0, where + ".profiles." + p, "no range for dim '" + d + "'");
    }
    for (std::size_t i = 0; i < g.outputs.size(); ++i) {
      for (const auto& e : g.outputs[i].shape) {
        if (e.is_fixed()) continue;
        for (const auto& t : split_plus(e.expr)) {
          std::string d;
          std::int64_t k;
          parse_term(t, d, k);
          require(bound.count(d) != 0, where + ".outputs[" + std::to_string(i) + "].shape",
                  "'" + e.expr + "' uses a dim no input has");
        }
      }
    }
  }
}

void check_kv_cache(const Manifest& m) {
  const GraphSpec& g = m.graph("transformer");
  const TransformerInfo& tr = m.transformer;
  const std::string where = at_path(m.label + ":", "graphs.transformer");
  const TensorSpec* pos = g.input("position");
  require(pos && pos->dtype == DType::Int64 && pos->shape.size() == 1 && !pos->shape[0].is_fixed() &&
              pos->shape[0].expr == "batch",
          where + ".inputs", "expected 'position' int64 of shape [batch], one per row (re-export artifacts of an older vqdeploy)");
  std::set<DType> dtypes;
  for (std::int64_t i = 0; i < tr.n_layer; ++i) {
    for (const char* part : {"key", "value"}) {
      for (bool input : {true, false}) {
        std::string name = std::string(input ? "cache." : "cache_out.") + std::to_string(i) + "." + part;
        const TensorSpec* t = input ? g.input(name) : g.output(name);
        bool ok = t && t->shape.size() == 4 && t->shape[1].fixed == tr.n_head && t->shape[2].fixed == tr.block_size &&
                  t->shape[3].fixed == tr.head_dim;
        require(ok, where + (input ? ".inputs" : ".outputs"),
                "expected '" + name + "' of shape (batch, " + std::to_string(tr.n_head) + ", " +
                    std::to_string(tr.block_size) + ", " + std::to_string(tr.head_dim) + ") for n_layer " +
                    std::to_string(tr.n_layer));
        dtypes.insert(t->dtype);
      }
    }
  }
  require(dtypes.size() == 1 && !dtypes.count(DType::Int64), where + ".inputs", "the KV cache has one float dtype");
  const TensorSpec* logits = g.output("logits");
  require(logits->shape[2].fixed == tr.vocab_size, where + ".outputs",
          "logits over " + (logits->shape[2].is_fixed() ? std::to_string(logits->shape[2].fixed) : logits->shape[2].expr) +
              " tokens, the vocabulary is " + std::to_string(tr.vocab_size));
  bool prefill = false, step = false;
  for (const auto& [p, r] : g.profiles) {
    prefill = prefill || p == "prefill";
    step = step || p == "step";
  }
  require(prefill && step, where + ".profiles", "expected 'prefill' and 'step'");
}

}  // namespace

const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int64: return "int64";
  }
  return "?";
}

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::Float32: return 4;
    case DType::Float16:
    case DType::BFloat16: return 2;
    case DType::Int64: return 8;
  }
  return 0;
}

const TensorSpec* GraphSpec::input(const std::string& n) const {
  for (const auto& t : inputs)
    if (t.name == n) return &t;
  return nullptr;
}

const TensorSpec* GraphSpec::output(const std::string& n) const {
  for (const auto& t : outputs)
    if (t.name == n) return &t;
  return nullptr;
}

std::string Conditioning::encoder_graph() const {
  if (kind == "image") return "cond_encoder";
  if (kind == "first_stage") return "encoder";
  return "";
}

const GraphSpec& Manifest::graph(const std::string& name) const {
  auto it = graphs.find(name);
  if (it == graphs.end()) artifact_error(directory + ": the artifacts have no '" + name + "' graph");
  return it->second;
}

std::int64_t eval_dim(const std::string& expr, const std::map<std::string, std::int64_t>& dims) {
  std::int64_t total = 0;
  for (const auto& t : split_plus(expr)) {
    std::string d;
    std::int64_t k = 1;
    if (!parse_term(t, d, k)) artifact_error("bad dim expression '" + expr + "'");
    auto it = dims.find(d);
    if (it == dims.end()) artifact_error("dim '" + d + "' is not bound");
    total += it->second * k;
  }
  return total;
}

Manifest read_manifest(const std::string& directory) {
  Manifest m;
  m.directory = directory;
  m.label = join_path(directory, "manifest.json");
  struct stat st {};
  if (::lstat(m.label.c_str(), &st) != 0)
    artifact_error(directory + ": no manifest.json (export the model first: vqdeploy export --ckpt ... --out " + directory + ")");
  const std::string path = artifact_file(directory, "manifest.json", m.label);
  const JsonDocument doc(read_small_file(path, kMaxJsonBytes, m.label, ErrorKind::Artifact), m.label, ErrorKind::Artifact);
  const Node root = doc.root(m.label + ":");
  if (!root.is_object() || !root.has("format") || !root.at("format").equals(std::string(kFormat)))
    artifact_error(m.label + ": not a vqdeploy manifest");
  if (!root.has("format_version") || !root.at("format_version").equals(kFormatVersion)) {
    std::string v = root.has("format_version") ? root.at("format_version").describe() : "None";
    artifact_error(m.label + ": manifest format " + v.substr(0, 20) + " is not supported by this vqdeploy-cpp (expects " +
                   std::to_string(kFormatVersion) + "); re-export");
  }

  // --- structure (manifest_schema.MANIFEST) ---
  Node model = root.at("model");
  if (auto family = model.get("family")) {
    // the families this runtime samples: taming's (also manifests before families, which name none) and LlamaGen's
    // (the same graph contract; its classifier-free guidance is RowPlan's rule, below). Another family's sampling
    // rules are not known here: refused, not guessed
    if (family->equals(std::string("llamagen"))) {
      m.family = "llamagen";
    } else if (!family->equals(std::string("taming"))) {
      artifact_error(family->where() + ": model family " + family->describe().substr(0, 64) +
                     " is not supported by this vqdeploy-cpp (taming and llamagen models only); sample it with "
                     "Python's vqdeploy run");
    }
  }
  m.kind = model.at("kind").one_of({"vqgan", "net2net"});
  m.first_stage = parse_vq(model.at("first_stage"), true);
  if (m.kind == "net2net") {
    Node tr = model.at("transformer");
    m.transformer.vocab_size = tr.at("vocab_size").integer(1, kMaxVocab);
    m.transformer.block_size = tr.at("block_size").integer(1, kMaxBlock);
    m.transformer.n_layer = tr.at("n_layer").integer(1, kMaxLayers);
    m.transformer.n_head = tr.at("n_head").integer(1, kMaxHeads);
    m.transformer.head_dim = tr.at("head_dim").integer(1, kMaxHeadDim);
    tr.at("parameters").integer(0, std::int64_t(1) << 48);
    m.conditioning = parse_conditioning(model.at("conditioning"), m.transformer.vocab_size);
    Node perm = model.at("permuter");
    if (auto p = perm.get("name"); p && p->is_string()) m.permuter = p->text()->substr(0, 64);
    perm.at("order");
    if (auto order = perm.get("order")) {
      std::size_t n = order->list(1, kMaxBlock);
      std::vector<std::int64_t> o(n);
      for (std::size_t i = 0; i < n; ++i) o[i] = order->item(i).integer(0, kMaxBlock - 1);
      m.order = o;
    }
    Node tokens = model.at("tokens");
    m.cond_tokens = tokens.at("cond").integer(1, kMaxBlock);
    m.image_tokens = tokens.at("image").integer(1, kMaxBlock);
  }
  m.fingerprint = sha256_of(root.at("model_fingerprint"));
  m.precision = root.at("precision").one_of({"fp32", "fp16", "bf16"});
  m.max_batch = root.at("max_batch").integer(1, kMaxBatch);
  Node graphs = root.at("graphs");
  for (const auto& name : graphs.keys(1, kMaxGraphs)) {
    if (!is_plain_name(name))
      artifact_error(graphs.where() + ": refused name '" + name.substr(0, 64) + "': expected a plain identifier (letters, digits, _)");
    m.graphs[name] = parse_graph(name, graphs.at(name));
  }
  if (auto sampling = root.get("sampling")) {
    if (!sampling->is_object()) sampling->fail("an object");
    if (auto gen = sampling->get("noise_generator")) {
      // the generator this runtime implements (vqdeploy/export/manifest.py NOISE_GENERATOR); another is refused
      gen->at("seed_sequence").one_of({"numpy.SeedSequence"});
      Node entropy = gen->at("entropy");
      if (!entropy.equals(std::vector<std::string>{"seed", "sample_index"})) entropy.fail("one of [\"seed\", \"sample_index\"]");
      gen->at("bit_generator").one_of({"numpy.PCG64"});
      gen->at("draw").one_of({"numpy.Generator.random"});
      m.states_noise_generator = true;
    }
  }

  // --- consistency (manifest_schema.CONSISTENCY) ---
  const std::string where = m.label + ":";
  const VQStage& s = m.first_stage;
  std::int64_t side = s.resolution / s.downsample_factor;
  require(s.latent_h == side && s.latent_w == side, at_path(where, "model.first_stage.latent_grid"),
          "[" + std::to_string(s.latent_h) + ", " + std::to_string(s.latent_w) + "] does not match resolution " +
              std::to_string(s.resolution) + " // downsample_factor " + std::to_string(s.downsample_factor));
  if (m.kind == "net2net") {
    require(m.image_tokens == s.latent_h * s.latent_w, at_path(where, "model.tokens.image"),
            std::to_string(m.image_tokens) + " is not " + std::to_string(s.latent_h) + "x" + std::to_string(s.latent_w));
    require(m.cond_tokens == m.conditioning.tokens, at_path(where, "model.tokens.cond"),
            "differs from model.conditioning.tokens");
    if (m.order) {
      std::vector<std::int64_t> sorted = *m.order;
      std::sort(sorted.begin(), sorted.end());
      bool perm = static_cast<std::int64_t>(sorted.size()) == m.image_tokens;
      for (std::size_t i = 0; perm && i < sorted.size(); ++i) perm = sorted[i] == static_cast<std::int64_t>(i);
      require(perm, at_path(where, "model.permuter.order"),
              "not a permutation of the " + std::to_string(m.image_tokens) + " image tokens");
    }
  }
  check_graph_dims(m);
  std::vector<std::string> needed{"encoder", "decoder"};
  if (m.kind == "net2net") {
    needed.push_back("transformer");
    if (!m.conditioning.encoder_graph().empty()) needed.push_back(m.conditioning.encoder_graph());
  }
  for (const auto& g : needed) require(m.has_graph(g), at_path(where, "graphs"), "no '" + g + "' graph");
  check_stage_io(m);
  if (m.kind == "net2net") check_kv_cache(m);
  return m;
}

}  // namespace vqdeploy
