// vqdeploy-cpp: `vqdeploy run` in C++, with its option names, defaults and meanings.
// Every problem is one "error: ..." line on stderr and a non-zero exit (1: bad input, artifacts or
// runtime; 2: a usage error or a bug in vqdeploy-cpp).
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "vqdeploy/pipeline.hpp"

namespace {

constexpr const char* kUsage = R"(Usage: vqdeploy-cpp run [OPTIONS] [INPUT]

  Sample images: encode the condition INPUT, sample tokens with the KV cache,
  decode. The C++ runtime of vqdeploy: the same tokens as `vqdeploy run` for
  the same seed.

  INPUT is the condition image the model was trained on, at its trained size
  (manifest.json model.conditioning.preprocessing.input says which; PNG);
  object-layout (scene) models take a scene JSON file; class-conditional and
  unconditional models take none.

Options:
  --artifacts PATH          Artifacts directory written by `vqdeploy export`.
                            [default: artifacts]
  --backend [auto|onnxruntime|tensorrt]
                            auto: TensorRT when engines and a GPU are there,
                            else ONNX Runtime.  [default: auto]
  --device [cpu|cuda]       Default: onnxruntime on cuda only with a GPU build
                            of onnxruntime and a GPU, tensorrt on cuda.
  --num-samples INTEGER     Images to sample; beyond the backend's batch limit
                            they run in batches (same images).  [default: 1]
  --temperature FLOAT       Divides the logits; 0 = greedy.  [default: 1.0]
  --top-k INTEGER           Sample among the k most likely tokens; 1 = greedy;
                            more than the vocabulary keeps all.  [default: 100]
  --top-p FLOAT             Nucleus sampling: the most likely tokens with mass
                            p, in (0, 1].
  --cfg-scale FLOAT         Classifier-free guidance (models with a null class,
                            e.g. LlamaGen): sample from uncond + (cond -
                            uncond) * S, S > 1 (1 = off; LlamaGen samples with
                            1.5-4).
  --cfg-interval INTEGER    With --cfg-scale: guide the first N + 2 tokens only
                            (LlamaGen's cfg_interval); -1 = all.
  --seed INTEGER            0 <= seed < 2^63; sample i of a seed is the same on
                            every backend and batch size.  [default: 0]
  --class INTEGER           Class id for class-conditional models.
  --size TEXT               S or WxH: only the trained size (vqdeploy-cpp does
                            no sliding-window sampling).
  --out PATH                Output PNG; with several samples NAME-0.png,
                            NAME-1.png, ... unless --grid.
                            [default: samples/sample.png]
  --grid                    Write all samples into one grid image.
  --json                    Print a JSON summary (timings, tokens/s, backend,
                            seed).
  --sampler [host|graph]    graph: the exported sampler graph on the backend's
                            device.  [default: host]
  --cuda-graphs             TensorRT: capture the one-token step as a CUDA
                            graph once per batch size and replay it.
  --tokens-out PATH         Also write the sampled tokens, (N, h, w) in raster
                            order, as JSON.
  -h, --help                Show this message and exit.
)";

struct UsageError {
  std::string message;
};

[[noreturn]] void usage(const std::string& message) { throw UsageError{message}; }

std::string quote(const std::string& s) { return "'" + s + "'"; }

std::int64_t parse_int(const std::string& option, const std::string& text, bool* overflow = nullptr) {
  std::string t = text;
  std::size_t start = t.find_first_not_of(" \t\n"), end = t.find_last_not_of(" \t\n");
  t = start == std::string::npos ? "" : t.substr(start, end - start + 1);
  const char* b = t.c_str();
  const char* e = b + t.size();
  if (!t.empty() && *b == '+') ++b;
  std::int64_t v = 0;
  auto [ptr, ec] = std::from_chars(b, e, v);
  bool digits = b != e && ptr == e;
  if (ec == std::errc::result_out_of_range && digits) {
    if (overflow) {
      *overflow = true;
      return 0;
    }
  }
  if (ec != std::errc() || !digits) usage("Invalid value for '" + option + "': " + quote(text) + " is not a valid integer.");
  return v;
}

double parse_float(const std::string& option, const std::string& text) {
  std::string t = text;
  std::size_t start = t.find_first_not_of(" \t\n"), end = t.find_last_not_of(" \t\n");
  t = start == std::string::npos ? "" : t.substr(start, end - start + 1);
  bool hex = t.find('x') != std::string::npos || t.find('X') != std::string::npos;
  char* stop = nullptr;
  double v = t.empty() || hex ? 0.0 : std::strtod(t.c_str(), &stop);
  if (t.empty() || hex || stop != t.c_str() + t.size())
    usage("Invalid value for '" + option + "': " + quote(text) + " is not a valid float.");
  return v;
}

std::string choice(const std::string& option, const std::string& v, const std::vector<std::string>& allowed) {
  for (const auto& a : allowed)
    if (a == v) return v;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + quote(a);
  usage("Invalid value for '" + option + "': " + quote(v) + " is not one of " + list + ".");
}

std::string stem_of(const std::string& name) {
  auto dot = name.rfind('.');
  return dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
}

std::string suffix_of(const std::string& name) {
  auto dot = name.rfind('.');
  return dot == std::string::npos || dot == 0 ? "" : name.substr(dot);
}

std::string parent_of(const std::string& path) {
  auto pos = path.rfind('/');
  return pos == std::string::npos ? "." : path.substr(0, pos == 0 ? 1 : pos);
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string json_number(double v) {  // shortest round trip, as Python's json writes floats
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, res.ptr);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

int run(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::cout << "Usage: vqdeploy-cpp run [OPTIONS] [INPUT]\n\n  vqdeploy-cpp run --help: the options.\n";
    return args.empty() ? 2 : 0;
  }
  if (args[0] != "run") usage("No such command " + quote(args[0]) + ".");
  std::map<std::string, std::string> values;
  std::map<std::string, bool> flags{{"--grid", false}, {"--json", false}, {"--cuda-graphs", false}};
  const std::vector<std::string> valued{"--artifacts", "--backend", "--device",  "--num-samples", "--temperature",
                                        "--top-k",     "--top-p",   "--seed",    "--class",       "--size",
                                        "--out",       "--sampler", "--tokens-out", "--cfg-scale", "--cfg-interval"};
  std::optional<std::string> input;
  for (std::size_t i = 1; i < args.size(); ++i) {
    std::string a = args[i];
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      return 0;
    }
    if (a.size() > 1 && a[0] == '-') {
      std::string name = a, value;
      bool inline_value = false;
      if (auto eq = a.find('='); eq != std::string::npos && a.rfind("--", 0) == 0) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
        inline_value = true;
      }
      if (flags.count(name)) {
        if (inline_value) usage("Option " + quote(name) + " does not take a value.");
        flags[name] = true;
        continue;
      }
      if (std::find(valued.begin(), valued.end(), name) == valued.end()) usage("No such option: " + name);
      if (!inline_value) {
        if (i + 1 >= args.size()) usage("Option " + quote(name) + " requires an argument.");
        value = args[++i];
      }
      values[name] = value;
      continue;
    }
    if (input) usage("Got unexpected extra argument (" + a + ")");
    input = a;
  }
  auto get = [&](const std::string& k, const std::string& def) { return values.count(k) ? values[k] : def; };

  vqdeploy::Options options;
  options.backend = choice("--backend", get("--backend", "auto"), {"auto", "onnxruntime", "tensorrt", "torch"});
  if (values.count("--device")) options.device = choice("--device", values["--device"], {"cpu", "cuda"});
  options.sampler = choice("--sampler", get("--sampler", "host"), {"host", "graph"});
  options.cuda_graphs = flags["--cuda-graphs"];
  options.log = [](const std::string& m) { std::cerr << m << std::endl; };
  const std::string artifacts = get("--artifacts", "artifacts");
  const std::string out = get("--out", "samples/sample.png");
  const bool grid = flags["--grid"];

  vqdeploy::Request req;
  req.input = input;
  req.params.temperature = parse_float("--temperature", get("--temperature", "1.0"));
  bool big = false;
  req.params.top_k = parse_int("--top-k", get("--top-k", "100"), &big);
  if (big) vqdeploy::input_error("--top-k must be in 1..2147483647, got " + get("--top-k", ""));
  if (values.count("--top-p")) req.params.top_p = parse_float("--top-p", values["--top-p"]);
  if (values.count("--cfg-scale")) req.params.cfg_scale = parse_float("--cfg-scale", values["--cfg-scale"]);
  if (values.count("--cfg-interval")) {
    req.params.cfg_interval = parse_int("--cfg-interval", values["--cfg-interval"], &big);
    if (big) vqdeploy::input_error("--cfg-interval must be in -1..65536, got " + values["--cfg-interval"]);
    if (!values.count("--cfg-scale"))
      vqdeploy::input_error("--cfg-interval applies to guided sampling: pass --cfg-scale S too");
  }
  const std::int64_t seed = parse_int("--seed", get("--seed", "0"), &big);
  if (big || seed < 0) vqdeploy::input_error("--seed must be in 0..9223372036854775807, got " + get("--seed", "0"));
  req.seed = static_cast<std::uint64_t>(seed);
  req.num_samples = parse_int("--num-samples", get("--num-samples", "1"), &big);
  if (big) vqdeploy::input_error("--num-samples must be in 1..4096, got " + get("--num-samples", ""));
  if (values.count("--class")) {
    req.class_id = parse_int("--class", values["--class"], &big);
    if (big) vqdeploy::input_error("--class " + values["--class"] + " is out of range");
  }

  const vqdeploy::Manifest manifest = vqdeploy::read_manifest(artifacts);
  req.params.check();
  std::string note;  // said once the run has passed every check, so that a refusal stays one line
  if (manifest.kind == "net2net" && req.params.top_k && *req.params.top_k > manifest.transformer.vocab_size) {
    note = "note: --top-k " + std::to_string(*req.params.top_k) + " is more than the " +
           std::to_string(manifest.transformer.vocab_size) + " tokens of this model: all are kept";
    req.params.top_k = manifest.transformer.vocab_size;
  }
  if (manifest.kind == "net2net") vqdeploy::check_guidance_option(manifest, req.params);
  if (values.count("--size")) {  // 'S' or 'WxH'; only the trained size
    std::string text = values["--size"], lower = text;
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    std::vector<std::int64_t> parts;
    std::size_t start = 0;
    bool ok = true;
    for (;;) {
      auto x = lower.find('x', start);
      std::string p = lower.substr(start, x == std::string::npos ? std::string::npos : x - start);
      std::int64_t v = 0;
      auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
      ok = ok && ec == std::errc() && ptr == p.data() + p.size() && !p.empty();
      parts.push_back(v);
      if (x == std::string::npos) break;
      start = x + 1;
    }
    if (parts.size() == 1) parts.push_back(parts[0]);
    if (!ok || parts.size() != 2) vqdeploy::input_error("--size must be S or WxH (e.g. 256 or 512x256), got '" + text + "'");
    if (parts[0] <= 0 || parts[1] <= 0) vqdeploy::input_error("--size must be positive, got '" + text + "'");
    const std::int64_t res = manifest.first_stage.resolution;
    if (parts[0] != res || parts[1] != res)
      vqdeploy::input_error("--size " + std::to_string(parts[0]) + "x" + std::to_string(parts[1]) +
                            ": vqdeploy-cpp samples the trained size " + std::to_string(res) + "x" + std::to_string(res) +
                            " only (sliding-window sampling for other sizes is in vqdeploy run)");
  }
  if (req.num_samples < 1 || req.num_samples > 4096)
    vqdeploy::input_error("--num-samples must be in 1..4096, got " + std::to_string(req.num_samples));

  // where the results go: checked before any work
  std::vector<std::string> paths;
  if (grid || req.num_samples == 1) {
    paths.push_back(out);
  } else {
    std::string dir = out.rfind('/') == std::string::npos ? "" : out.substr(0, out.rfind('/') + 1);
    std::string name = out.substr(dir.size());
    std::string suffix = suffix_of(name).empty() ? ".png" : suffix_of(name);
    for (std::int64_t i = 0; i < req.num_samples; ++i) paths.push_back(dir + stem_of(name) + "-" + std::to_string(i) + suffix);
  }
  std::vector<std::string> all = paths;
  if (values.count("--tokens-out")) all.push_back(values["--tokens-out"]);
  for (const auto& p : all) {
    vqdeploy::check_writable(parent_of(p), "--out");
    if (is_dir(p)) vqdeploy::input_error("--out: " + p + " is a directory; name a file (e.g. " + p + "/sample.png)");
  }
  if (manifest.kind == "net2net") vqdeploy::check_class_option(manifest, req.class_id);

  auto t0 = std::chrono::steady_clock::now();
  vqdeploy::Pipeline pipe = vqdeploy::Pipeline::open(artifacts, options);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  vqdeploy::Result result = pipe.run(req);
  if (!note.empty()) options.log(note);

  std::vector<std::pair<std::string, std::vector<std::uint8_t>>> files;
  if (grid) {
    files.emplace_back(paths[0], vqdeploy::encode_png(vqdeploy::grid_image(result.images)));
  } else {
    for (std::size_t i = 0; i < paths.size(); ++i) files.emplace_back(paths[i], vqdeploy::encode_png(result.images[i]));
  }
  if (values.count("--tokens-out")) {  // {"shape": [N, h, w], "tokens": [[[...], ...], ...]}
    std::string text = "{\"shape\": [" + std::to_string(result.num_samples) + ", " + std::to_string(result.grid_h) + ", " +
                       std::to_string(result.grid_w) + "], \"tokens\": [";
    std::size_t k = 0;
    for (std::int64_t i = 0; i < result.num_samples; ++i) {
      text += i ? ", [" : "[";
      for (std::int64_t y = 0; y < result.grid_h; ++y) {
        text += y ? ", [" : "[";
        for (std::int64_t x = 0; x < result.grid_w; ++x) text += (x ? ", " : "") + std::to_string(result.tokens[k++]);
        text += "]";
      }
      text += "]";
    }
    text += "]}\n";
    files.emplace_back(values["--tokens-out"], std::vector<std::uint8_t>(text.begin(), text.end()));
  }
  vqdeploy::write_files_atomically(files);
  std::string wrote;
  for (const auto& p : paths) wrote += (wrote.empty() ? "" : ", ") + p;
  std::cerr << "wrote " << wrote << std::endl;

  if (flags["--json"]) {  // the keys of vqdeploy run --json
    const double sampling = result.timings.sampling;
    const double tps = sampling > 0 ? static_cast<double>(result.tokens.size()) / sampling : 0.0;
    auto num = [](double v, double scale) { return json_number(std::round(v * scale) / scale); };
    std::string outputs;
    for (const auto& p : paths) outputs += (outputs.empty() ? "\n    " : ",\n    ") + json_string(p);
    std::cout << "{\n  \"backend\": " << json_string(pipe.backend()) << ",\n  \"device\": " << json_string(pipe.device())
              << ",\n  \"sampler\": " << json_string(options.sampler) << ",\n  \"cuda_graphs\": "
              << (options.cuda_graphs ? "true" : "false") << ",\n  \"seed\": " << req.seed
              << ",\n  \"num_samples\": " << req.num_samples << ",\n  \"sampling\": {\n    \"temperature\": "
              << json_number(req.params.temperature) << ",\n    \"top_k\": "
              << (req.params.top_k ? std::to_string(*req.params.top_k) : "null") << ",\n    \"top_p\": "
              << (req.params.top_p ? json_number(*req.params.top_p) : "null")
              << (req.params.guided() ? ",\n    \"cfg_scale\": " + json_number(req.params.cfg_scale) +
                                            ",\n    \"cfg_interval\": " + std::to_string(req.params.cfg_interval)
                                      : std::string())
              << "\n  },\n  \"tokens_per_sample\": "
              << result.grid_h * result.grid_w << ",\n  \"sliding_window\": false,\n  \"timings_s\": {\n    \"load\": "
              << num(load_s, 1e4) << ",\n    \"cond_encoder\": " << num(result.timings.cond_encoder, 1e4)
              << ",\n    \"sampling\": " << num(sampling, 1e4) << ",\n    \"decoder\": " << num(result.timings.decoder, 1e4)
              << "\n  },\n  \"tokens_per_s\": " << num(tps, 100) << ",\n  \"outputs\": [" << outputs << "\n  ]\n}"
              << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "error: " << e.message << " (see: vqdeploy-cpp run --help)" << std::endl;
    return 2;
  } catch (const vqdeploy::Error& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of memory" << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::string what = e.what();
    if (auto nl = what.find('\n'); nl != std::string::npos) what = what.substr(0, nl);
    std::cerr << "error: internal error: " << what << std::endl;
    return 2;
  } catch (...) {
    std::cerr << "error: internal error" << std::endl;
    return 2;
  }
}
