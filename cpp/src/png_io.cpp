// PNG decoding with libpng, to the modes and sample values Pillow (PIL.PngImagePlugin) gives:
// 1-bit grey "1"; 2/4/8-bit grey "L" (2 and 4 bits scaled to 0..255 as Pillow's L;2 / L;4);
// 16-bit grey "I;16"; palettes "P" (indices); grey + alpha "LA" (16-bit: "RGBA"); RGB and RGBA
// (16-bit: the high bytes). tRNS does not change the mode, as in Pillow.
#include "vqdeploy/image.hpp"

#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>

#include "vqdeploy/error.hpp"

namespace vqdeploy {

namespace {

struct PngError {
  char message[200] = "";
};

void on_error(png_structp png, png_const_charp msg) {
  auto* err = static_cast<PngError*>(png_get_error_ptr(png));
  std::snprintf(err->message, sizeof err->message, "%s", msg);
  png_longjmp(png, 1);
}

void on_warning(png_structp, png_const_charp) {}

struct File {
  std::FILE* f = nullptr;
  ~File() {
    if (f) std::fclose(f);
  }
};

}  // namespace

namespace {

// what libpng gives, filled by decode_raw (all state behind pointers: nothing to clobber by longjmp)
struct Raw {
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0;
  std::vector<std::uint8_t> bytes;
  std::vector<png_bytep> rows;
  std::vector<std::uint8_t> palette;
};

// 0: decoded; 1: libpng failed (err->message); 2: refused on the header (size). No C++ object is
// created or changed between setjmp and the end (-Wclobbered): only libpng calls and raw's vectors.
int decode_raw(std::FILE* f, std::pair<std::int64_t, std::int64_t> expect, Raw* raw, PngError* err) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, err, on_error, on_warning);
  if (!png) return std::snprintf(err->message, sizeof err->message, "out of memory"), 1;
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    return std::snprintf(err->message, sizeof err->message, "out of memory"), 1;
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return 1;
  }
  png_set_user_limits(png, 1u << 20, 1u << 20);
  png_set_chunk_malloc_max(png, 64u << 20);
  png_init_io(png, f);
  png_set_sig_bytes(png, 8);
  png_read_info(png, info);
  raw->width = png_get_image_width(png, info);
  raw->height = png_get_image_height(png, info);
  raw->bit_depth = png_get_bit_depth(png, info);
  raw->color_type = png_get_color_type(png, info);
  const auto w = static_cast<std::int64_t>(raw->width), h = static_cast<std::int64_t>(raw->height);
  if (w * h > kDecodePixels || (expect.first >= 0 && (h != expect.first || w != expect.second))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return 2;  // refused on the header, before decoding (the caller says why)
  }
  if (raw->color_type == PNG_COLOR_TYPE_GRAY && raw->bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (raw->color_type == PNG_COLOR_TYPE_PALETTE) png_set_packing(png);
  if (raw->bit_depth == 16 && raw->color_type != PNG_COLOR_TYPE_GRAY) png_set_strip_16(png);
  if (raw->bit_depth == 16 && raw->color_type == PNG_COLOR_TYPE_GRAY) png_set_swap(png);  // native 16-bit samples
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const std::size_t rowbytes = png_get_rowbytes(png, info);
  raw->bytes.resize(rowbytes * raw->height);
  raw->rows.resize(raw->height);
  for (png_uint_32 y = 0; y < raw->height; ++y) raw->rows[y] = raw->bytes.data() + y * rowbytes;
  png_read_image(png, raw->rows.data());
  png_read_end(png, nullptr);
  png_colorp plte = nullptr;
  int count = 0;
  if (raw->color_type == PNG_COLOR_TYPE_PALETTE && png_get_PLTE(png, info, &plte, &count)) {
    for (int i = 0; i < count; ++i) {
      raw->palette.push_back(plte[i].red);
      raw->palette.push_back(plte[i].green);
      raw->palette.push_back(plte[i].blue);
    }
  }
  png_destroy_read_struct(&png, &info, nullptr);
  return 0;
}

}  // namespace

DecodedPng read_png(const std::string& path, std::pair<std::int64_t, std::int64_t> expect) {
  File file;
  file.f = std::fopen(path.c_str(), "rb");
  if (!file.f) input_error("input image not found: " + path);
  unsigned char sig[8] = {};
  if (std::fread(sig, 1, 8, file.f) != 8 || png_sig_cmp(sig, 0, 8) != 0)
    input_error(path + ": not a PNG image (vqdeploy-cpp reads PNG conditions)");
  Raw raw;
  PngError err;
  int status = decode_raw(file.f, expect, &raw, &err);
  if (status == 1) input_error(path + ": corrupt image (" + err.message + ")");
  if (status == 2) {
    const auto w = static_cast<std::int64_t>(raw.width), h = static_cast<std::int64_t>(raw.height);
    if (w * h > kDecodePixels)
      input_error(path + ": " + std::to_string(w) + "x" + std::to_string(h) + " is too large (limit " +
                  std::to_string(kDecodePixels) + " pixels)");
    input_error(path + ": is " + std::to_string(w) + "x" + std::to_string(h) +
                "; vqdeploy-cpp takes condition images at the model's trained size " + std::to_string(expect.second) + "x" +
                std::to_string(expect.first) + " only (it does not resize; vqdeploy run does)");
  }

  DecodedPng out;
  out.width = raw.width;
  out.height = raw.height;
  out.palette = std::move(raw.palette);
  const std::size_t n = static_cast<std::size_t>(raw.width) * raw.height;
  const int bits = raw.bit_depth;
  switch (raw.color_type) {
    case PNG_COLOR_TYPE_GRAY:
      out.mode = bits == 1 ? "1" : bits == 16 ? "I;16" : "L";
      out.channels = 1;
      break;
    case PNG_COLOR_TYPE_PALETTE:
      out.mode = "P";
      out.channels = 1;
      break;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
      out.mode = bits == 16 ? "RGBA" : "LA";
      out.channels = bits == 16 ? 4 : 2;
      break;
    case PNG_COLOR_TYPE_RGB:
      out.mode = "RGB";
      out.channels = 3;
      break;
    default:
      out.mode = "RGBA";
      out.channels = 4;
  }
  out.values.resize(n * static_cast<std::size_t>(out.channels));
  const auto& b = raw.bytes;
  if (out.mode == "I;16") {
    for (std::size_t i = 0; i < n; ++i) {
      std::uint16_t v;
      std::memcpy(&v, b.data() + 2 * i, 2);
      out.values[i] = v;
    }
  } else if (out.mode == "1") {
    for (std::size_t i = 0; i < n; ++i) out.values[i] = b[i] ? 1 : 0;
  } else if (raw.color_type == PNG_COLOR_TYPE_GRAY_ALPHA && bits == 16) {  // Pillow: LA;16B -> RGBA
    for (std::size_t i = 0; i < n; ++i) {
      out.values[4 * i] = out.values[4 * i + 1] = out.values[4 * i + 2] = b[2 * i];
      out.values[4 * i + 3] = b[2 * i + 1];
    }
  } else {
    for (std::size_t i = 0; i < out.values.size(); ++i) out.values[i] = b[i];
  }
  if (out.mode == "P") {
    const std::size_t entries = out.palette.size() / 3;
    for (std::size_t i = 0; i < n; ++i)
      if (out.values[i] >= entries)
        input_error(path + ": palette index " + std::to_string(out.values[i]) + " beyond the " +
                    std::to_string(entries) + " palette entries");
  }
  return out;
}

namespace {

void append_bytes(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<std::vector<std::uint8_t>*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + length);
}

void no_flush(png_structp) {}

}  // namespace

std::vector<std::uint8_t> encode_png(const Image& image) {
  std::vector<std::uint8_t> out;
  PngError err;
  std::vector<png_const_bytep> rows(static_cast<std::size_t>(image.height));
  for (std::int64_t y = 0; y < image.height; ++y)
    rows[static_cast<std::size_t>(y)] = image.pixels.data() + y * image.width * image.channels;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, on_error, on_warning);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    png_destroy_write_struct(&png, &info);
    backend_error("libpng: cannot encode (out of memory)");
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    backend_error(std::string("libpng: cannot encode (") + err.message + ")");
  }
  png_set_write_fn(png, &out, append_bytes, no_flush);
  png_set_IHDR(png, info, static_cast<png_uint_32>(image.width), static_cast<png_uint_32>(image.height), 8,
               image.channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, const_cast<png_bytepp>(rows.data()));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

}  // namespace vqdeploy
