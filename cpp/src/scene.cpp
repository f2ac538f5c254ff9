// Scene files -> object-layout tokens: vqdeploy/conditions/objects.py (reading and checking the
// file) and layout_builder.py (upstream's builders without the shuffle), in doubles with
// round-half-to-even as Python's round, so the tokens are Python's.
#include <algorithm>
#include <cmath>
#include <set>

#include "conditions.hpp"
#include "json_node.hpp"

namespace vqdeploy {

namespace {

constexpr std::size_t kMaxSceneBytes = 1 << 20;
constexpr std::size_t kMaxSceneObjects = 10000;
const char* const kFlags[] = {"is_group_of", "is_occluded", "is_depiction", "is_inside"};

struct Box {
  double x0, y0, w, h;
};

struct Object {
  std::int64_t category;
  Box box;
  bool flags[4];
};

std::string fmt_g(double v) {  // Python's f"{v:g}"
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

void check_keys(const Node& d, const std::set<std::string>& required, const std::set<std::string>& allowed,
                const std::string& where) {
  std::string expected;
  for (const auto& k : allowed) expected += (expected.empty() ? "" : ", ") + k;
  for (const auto& k : required)
    if (!d.has(k)) input_error(where + ": missing key '" + k + "' (expected " + expected + ")");
  std::set<std::string> extra;
  for (const auto& k : d.object_keys())
    if (!allowed.count(k)) extra.insert(k.substr(0, 40));
  if (!extra.empty()) input_error(where + ": unknown key '" + *extra.begin() + "' (expected " + expected + ")");
}

Box parse_box(const Node& v, const std::string& where, bool positive) {
  bool ok = v.is_array() && v.size() == 4;
  for (std::size_t i = 0; ok && i < 4; ++i) ok = v.item(i).is_number() && std::isfinite(v.item(i).as_double());
  if (!ok) input_error(where + ": expected [x0, y0, w, h], four numbers in [0, 1]");
  Box b{v.item(0).as_double(), v.item(1).as_double(), v.item(2).as_double(), v.item(3).as_double()};
  if (b.w < 0 || b.h < 0 || (positive && (b.w <= 0 || b.h <= 0)))
    input_error(where + ": " + (positive ? "a crop needs a positive" : "a box cannot have a negative") + " size (w = " +
                fmt_g(b.w) + ", h = " + fmt_g(b.h) + ")");
  const double eps = 1e-9;
  if (!(0 <= b.x0 && b.x0 <= 1 && 0 <= b.y0 && b.y0 <= 1 && b.x0 + b.w <= 1 + eps && b.y0 + b.h <= 1 + eps))
    input_error(where + ": [" + fmt_g(b.x0) + ", " + fmt_g(b.y0) + ", " + fmt_g(b.w) + ", " + fmt_g(b.h) +
                "] is outside [0, 1] (relative coordinates: x0 + w and y0 + h at most 1)");
  return b;
}

std::string fold(std::string s) {  // str.casefold for the ASCII names of the data sets
  for (auto& ch : s)
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
  return s;
}

std::int64_t parse_category(const Conditioning& c, const Node& v, const std::string& where) {
  const std::int64_t n = c.builder.no_object_classes;
  const std::string range = "0.." + std::to_string(n - 1);
  if (v.is_integer()) {
    const std::optional<std::int64_t> k = v.as_int64();
    if (k && *k >= 0 && *k < n) return *k;
    input_error(where + ": unknown category " + v.describe() + ": this model has categories " + range);
  }
  if (v.is_string()) {
    const std::string s = *v.text();
    const std::size_t names = std::min<std::size_t>(c.categories.size(), static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < names; ++i)
      if (c.categories[i] == s) return static_cast<std::int64_t>(i);
    for (std::size_t i = 0; i < names; ++i)
      if (fold(c.categories[i]) == fold(s)) return static_cast<std::int64_t>(i);
    const std::string shown = s.substr(0, 64);
    if (names)
      input_error(where + ": unknown category name '" + shown + "' (not one of the " + std::to_string(names) + " " +
                  c.dataset.value_or("") + " names in manifest.json model.conditioning.categories)");
    input_error(where + ": unknown category name '" + shown + "': " +
                (c.dataset ? "this " + *c.dataset + " model's category numbering is not known (an allow list or "
                                                    "mapping decides it)"
                           : std::string("this model's data set is not known")) +
                ", so give category numbers (" + range + ")");
  }
  input_error(where + ": expected a category number (" + range + ")");
}

double clamp01(double x) { return std::max(std::min(x, 1.0), 0.0); }

double intersection_area(const Box& a, const Box& b) {
  double xo = std::max(0.0, std::min(a.x0 + a.w, b.x0 + b.w) - std::max(a.x0, b.x0));
  double yo = std::max(0.0, std::min(a.y0 + a.h, b.y0 + b.h) - std::max(a.y0, b.y0));
  return xo * yo;
}

Box rescale(const Box& b, const Box& crop) {
  double x0 = clamp01((b.x0 - crop.x0) / crop.w);
  double y0 = clamp01((b.y0 - crop.y0) / crop.h);
  return {x0, y0, std::min(b.w / crop.w, 1 - x0), std::min(b.h / crop.h, 1 - y0)};
}

}  // namespace

std::vector<std::int64_t> scene_tokens(const Conditioning& c, const std::string& path, const Log& log) {
  const std::string data = read_small_file(path, kMaxSceneBytes, path, ErrorKind::Input);
  const JsonDocument doc(data, path, ErrorKind::Input, " (a scene file is JSON)");
  const Node scene = doc.root(path + ":");
  if (!scene.is_object()) input_error(path + ": expected a JSON object {\"objects\": [...], \"crop\": [...]}");
  check_keys(scene, {"objects"}, {"objects", "crop"}, path);
  const Node items = scene.at("objects");
  if (!items.is_array()) input_error(path + ": 'objects' must be a list of {\"category\", \"bbox\"} objects");
  if (items.size() > kMaxSceneObjects)
    input_error(path + ": " + std::to_string(items.size()) + " objects, over " + std::to_string(kMaxSceneObjects));
  std::vector<Object> objects;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string where = path + ": objects[" + std::to_string(i) + "]";
    const Node o = items.item(i);
    if (!o.is_object()) input_error(where + ": expected an object {\"category\", \"bbox\"}");
    check_keys(o, {"category", "bbox"}, {"category", "bbox", kFlags[0], kFlags[1], kFlags[2], kFlags[3]}, where);
    Object obj{};
    for (int f = 0; f < 4; ++f) {
      if (!o.has(kFlags[f])) continue;
      const Node flag = o.at(kFlags[f]);
      if (!flag.is_boolean()) input_error(where + "." + kFlags[f] + ": expected true or false");
      obj.flags[f] = flag.boolean();
    }
    obj.category = parse_category(c, o.at("category"), where + ".category");
    obj.box = parse_box(o.at("bbox"), where + ".bbox", false);
    objects.push_back(obj);
  }
  std::optional<Box> crop;
  if (auto node = scene.get("crop")) crop = parse_box(*node, path + ": crop", true);

  const LayoutBuilderSpec& b = c.builder;
  if (static_cast<std::int64_t>(objects.size()) > b.no_max_objects && log)
    log("warning: the scene has " + std::to_string(objects.size()) + " objects; this model takes " +
        std::to_string(b.no_max_objects) + ": the first " + std::to_string(b.no_max_objects) + " are kept (as upstream)");
  if (objects.empty() && log) log("warning: the scene has no objects");

  // LayoutBuilder.build
  const auto sections = static_cast<std::int64_t>(std::sqrt(static_cast<double>(b.no_tokens)));
  auto point = [&](double x, double y) {
    const double s = static_cast<double>(sections - 1);
    return static_cast<std::int64_t>(std::nearbyint(y * s)) * sections + static_cast<std::int64_t>(std::nearbyint(x * s));
  };
  const Box full{0.0, 0.0, 1.0, 1.0};
  const Box region = crop.value_or(full);
  const Box frame = b.encode_crop ? full : region;
  const bool bbox = b.name == "objects_bbox";
  const std::int64_t per = bbox ? 3 : 2;
  std::vector<std::int64_t> out;
  for (std::size_t i = 0; i < objects.size() && static_cast<std::int64_t>(i) < b.no_max_objects; ++i) {
    const Object& o = objects[i];
    if (!(intersection_area(o.box, region) > 0.0)) continue;
    const Box r = rescale(o.box, frame);
    std::int64_t modifier = 0;
    if (b.use_group_parameter) modifier |= o.flags[0] ? 1 : 0;
    if (b.use_additional_parameters) modifier |= (o.flags[1] ? 2 : 0) | (o.flags[2] ? 4 : 0) | (o.flags[3] ? 8 : 0);
    out.push_back(o.category + b.no_object_classes * modifier);
    if (bbox) {
      out.push_back(point(r.x0, r.y0));
      out.push_back(point(r.x0 + r.w, r.y0 + r.h));
    } else {
      out.push_back(point(r.x0 + r.w / 2, r.y0 + r.h / 2));
    }
  }
  out.resize(static_cast<std::size_t>(b.no_max_objects * per), b.no_tokens - 1);
  if (b.encode_crop) {
    out.push_back(point(region.x0, region.y0));
    out.push_back(point(region.x0 + region.w, region.y0 + region.h));
  }
  for (auto t : out)
    if (t < 0 || t >= b.no_tokens) input_error(path + ": the layout gives a token outside 0.." + std::to_string(b.no_tokens - 1));
  return out;
}

}  // namespace vqdeploy
