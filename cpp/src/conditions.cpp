#include "conditions.hpp"

#include <algorithm>
#include <cmath>

#include "graphs.hpp"
#include "vqdeploy/error.hpp"
#include "vqdeploy/image.hpp"

namespace vqdeploy {

namespace {

std::string summary(const Conditioning& c) {
  if (c.kind == "class") return "class-conditional";
  if (c.kind == "sos") return "unconditional";
  if (c.kind == "coord") return "coordinate-conditional";
  if (c.kind == "objects") return "conditioned on an object layout";
  return "conditioned on an image";
}

bool ends_with_json(const std::string& path) {
  if (path.size() < 5) return false;
  std::string tail = path.substr(path.size() - 5);
  std::transform(tail.begin(), tail.end(), tail.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return tail == ".json";
}

// Pillow's L = R * 299/1000 + G * 587/1000 + B * 114/1000 (ImagingConvert's L24, fixed point)
std::uint16_t luma(std::uint32_t r, std::uint32_t g, std::uint32_t b) {
  return static_cast<std::uint16_t>((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

// img.convert("L") / img.convert("RGB") of the modes a PNG decodes to
std::vector<std::uint16_t> convert(const DecodedPng& img, bool rgb, const std::string& path) {
  const std::size_t n = static_cast<std::size_t>(img.width * img.height);
  const std::size_t c = static_cast<std::size_t>(img.channels);
  std::vector<std::uint16_t> out(n * (rgb ? 3 : 1));
  if (img.mode == "I;16") input_error(path + ": a 16-bit greyscale PNG is not an RGB image; convert it first");
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t r, g, b;
    const std::uint16_t* px = &img.values[i * c];
    if (img.mode == "1") {
      r = g = b = px[0] ? 255u : 0u;
    } else if (img.mode == "L" || img.mode == "LA") {
      r = g = b = px[0];
    } else if (img.mode == "P") {
      const std::uint8_t* e = &img.palette[3 * static_cast<std::size_t>(px[0])];
      r = e[0], g = e[1], b = e[2];
    } else {  // RGB, RGBA
      r = px[0], g = px[1], b = px[2];
    }
    if (rgb) {
      out[3 * i] = static_cast<std::uint16_t>(r), out[3 * i + 1] = static_cast<std::uint16_t>(g), out[3 * i + 2] = static_cast<std::uint16_t>(b);
    } else {
      out[i] = (img.mode == "1" || img.mode == "L" || img.mode == "LA") ? static_cast<std::uint16_t>(r) : luma(r, g, b);
    }
  }
  return out;
}

HostTensor image_tensor(const Conditioning& c, const std::string& path, const Log& log) {
  const DecodedPng img = read_png(path, {c.resolution, c.resolution});
  const std::int64_t h = img.height, w = img.width;
  const std::size_t n = static_cast<std::size_t>(h * w);
  if (c.preprocessing == "onehot") {
    if (img.mode != "L" && img.mode != "P" && img.mode != "I;16")
      input_error(path + ": a segmentation must be a label PNG (mode L, P or I holding class ids), got mode " + img.mode);
    HostTensor t(DType::Int64, {1, h, w});
    auto* labels = t.as<std::int64_t>();
    std::int64_t lo = img.values[0], hi = img.values[0];
    for (std::size_t i = 0; i < n; ++i) {
      labels[i] = img.values[i];
      lo = std::min(lo, labels[i]);
      hi = std::max(hi, labels[i]);
    }
    if (lo < 0 || hi >= c.num_classes)
      input_error(path + ": class ids must be in 0.." + std::to_string(c.num_classes - 1) + ", found " +
                  std::to_string(lo) + ".." + std::to_string(hi));
    return t;
  }
  if (c.preprocessing == "grey" && img.mode == "I;16") {
    // a depth map: normalised to [-1, 1] as taming does, in float32 as numpy computes it
    HostTensor t(DType::Float32, {1, 1, h, w});
    float* x = t.as<float>();
    float lo = img.values[0], hi = img.values[0];
    for (std::size_t i = 0; i < n; ++i) {
      x[i] = static_cast<float>(img.values[i]);
      lo = std::min(lo, x[i]);
      hi = std::max(hi, x[i]);
    }
    const auto range = static_cast<float>(std::max(static_cast<double>(hi) - static_cast<double>(lo), 1e-8));
    for (std::size_t i = 0; i < n; ++i) x[i] = 2.0f * (x[i] - lo) / range - 1.0f;
    return t;
  }
  const bool rgb = c.preprocessing == "rgb";
  if (!rgb && img.mode != "L" && img.mode != "1" && img.mode != "P" && img.mode != "LA" && log)
    log("note: " + path + " is a " + img.mode + " image; converted to greyscale as this model expects");
  const std::vector<std::uint16_t> v = convert(img, rgb, path);
  const std::int64_t channels = rgb ? 3 : 1;
  HostTensor t(DType::Float32, {1, channels, h, w});
  float* x = t.as<float>();
  double mean = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    for (std::int64_t ch = 0; ch < channels; ++ch) {  // HWC -> CHW
      float f = static_cast<float>(v[i * static_cast<std::size_t>(channels) + static_cast<std::size_t>(ch)]) / 127.5f - 1.0f;
      x[static_cast<std::size_t>(ch) * n + i] = f;
      mean += f;
    }
  }
  if (c.light_background && mean < 0.0 && log)
    log("warning: " + path + " is mostly dark; this model's inputs are dark strokes on a light background "
        "(inverted input gives unrelated images)");
  return t;
}

// taming CoordStage.encode of the [0,1) raster-position map: area-downsample, clamp, scale, round
std::vector<std::int64_t> coord_tokens(const Conditioning& c) {
  const std::int64_t h = c.resolution, w = c.resolution, f = c.factor;
  const std::int64_t hh = h / f, ww = w / f;
  std::vector<std::int64_t> out(static_cast<std::size_t>(hh * ww));
  const auto total = static_cast<float>(h * w);
  for (std::int64_t i = 0; i < hh; ++i) {
    for (std::int64_t j = 0; j < ww; ++j) {
      double sum = 0.0;  // exact for every power-of-two grid (see docs/cpp.md)
      for (std::int64_t y = i * f; y < (i + 1) * f; ++y)
        for (std::int64_t x = j * f; x < (j + 1) * f; ++x) sum += static_cast<double>(static_cast<float>(y * w + x) / total);
      float mean = static_cast<float>(sum) / static_cast<float>(f * f);
      float v = static_cast<float>(c.n_embed) * std::min(std::max(mean, 0.0f), 1.0f);
      out[static_cast<std::size_t>(i * ww + j)] = static_cast<std::int64_t>(std::nearbyint(v));
    }
  }
  return out;
}

}  // namespace

void check_class(const Conditioning& c, const std::optional<std::int64_t>& class_id) {
  if (c.kind != "class") {
    if (class_id) input_error("--class is for class-conditional models; this model is " + summary(c));
    return;
  }
  const std::string range = "(0.." + std::to_string(c.n_classes - 1) + ")";
  if (!class_id) input_error("this model is class-conditional: pass --class ID " + range);
  if (*class_id < 0 || *class_id >= c.n_classes)
    input_error("--class " + std::to_string(*class_id) + " is out of range " + range);
}

ConditionInput read_condition(const Manifest& m, const std::optional<std::string>& input,
                              const std::optional<std::int64_t>& class_id, const Log& log) {
  const Conditioning& c = m.conditioning;
  ConditionInput out;
  if (input && c.kind != "objects" && ends_with_json(*input))
    input_error(*input + ": a scene file is for models conditioned on an object layout; this model is " + summary(c));
  if (c.kind == "image" || c.kind == "first_stage") {
    if (!input) input_error("this model is conditioned on an image: pass INPUT (e.g. a sketch or label map PNG)");
    out.encode = true;
    out.tensor = image_tensor(c, *input, log);
    return out;
  }
  if (c.kind == "objects") {
    if (!input)
      input_error("this model is conditioned on an object layout: pass a scene JSON file as INPUT (`vqdeploy inspect` "
                  "shows what it must contain)");
    if (!ends_with_json(*input))
      input_error(*input + ": this model is conditioned on an object layout, not an image: pass a scene JSON file "
                           "(`vqdeploy inspect` shows what it must contain)");
    out.tokens = scene_tokens(c, *input, log);
    return out;
  }
  if (input) input_error("this model is " + summary(c) + ": it takes no INPUT");
  if (c.kind == "class") {
    check_class(c, class_id);
    out.tokens = {*class_id};
  } else if (c.kind == "sos") {
    out.tokens = {c.sos_token};
  } else {  // coord
    out.tokens = coord_tokens(c);
  }
  return out;
}

std::vector<std::int64_t> condition_tokens(Graphs& graphs, const Manifest& m, const ConditionInput& in, std::int64_t batch) {
  std::vector<std::int64_t> one = in.tokens;
  if (in.encode) {
    const std::string graph = m.conditioning.encoder_graph();
    const std::string name = m.graph(graph).inputs[0].name;
    HostTensor out = graphs.run_graph(graph, {{name, in.tensor}}).at("indices");
    one.assign(out.as<std::int64_t>(), out.as<std::int64_t>() + element_count(out.shape));
  }
  std::vector<std::int64_t> rows;
  rows.reserve(one.size() * static_cast<std::size_t>(batch));
  for (std::int64_t b = 0; b < batch; ++b) rows.insert(rows.end(), one.begin(), one.end());
  return rows;
}

}  // namespace vqdeploy
