// Images in and out: PNG files decoded with the modes Pillow gives them (a condition is read as
// Python's vqdeploy reads it), and written atomically.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vqdeploy {

// (height, width, channels) uint8, row-major: what vqdeploy-cpp writes
struct Image {
  std::int64_t width = 0, height = 0, channels = 0;
  std::vector<std::uint8_t> pixels;
};

// A decoded PNG as Pillow opens it: mode "1", "L", "I;16", "P", "LA", "RGB" or "RGBA";
// ``values`` holds width*height*channels samples (palette indices for "P", 0/1 for "1").
struct DecodedPng {
  std::string mode;
  std::int64_t width = 0, height = 0, channels = 0;
  std::vector<std::uint16_t> values;
  std::vector<std::uint8_t> palette;  // "P": RGB triples
};

constexpr std::int64_t kDecodePixels = 64000000;  // beyond this an image is a decompression bomb

// Decode ``path``; ``expect`` (height, width): refuse another size before decoding (-1: any size
// up to kDecodePixels). Input error with one line when it is not a readable PNG.
DecodedPng read_png(const std::string& path, std::pair<std::int64_t, std::int64_t> expect = {-1, -1});

// PNG file contents of an image (1 or 3 channels)
std::vector<std::uint8_t> encode_png(const Image& image);

// Write every file or none: each to a new temp file beside it (O_EXCL), fsynced, then all renamed
// (a symlink at a target is replaced, not followed). Input error naming the file otherwise.
void write_files_atomically(const std::vector<std::pair<std::string, std::vector<std::uint8_t>>>& files);

// encode_png + write_files_atomically for one image
void write_png(const std::string& path, const Image& image);

// Fail before any work when ``directory`` cannot take new files (nothing is created).
void check_writable(const std::string& directory, const std::string& what);

}  // namespace vqdeploy
