// PNG chunk helpers of segkd_distill (no decoding: stb_image decodes): read the chunks before the pixels, and
// rewrite a palette PNG so that each palette index decodes to its own colour.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

namespace segkd {

// What a PNG's chunks before its pixels say: IHDR's colour type and bit depth, whether a PLTE holds entries.
struct PngHeader {
  int colour_type = -1, bit_depth = 0;
  bool has_palette = false;
};

inline uint32_t big_endian(const unsigned char* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

// The header of a PNG file, read chunk by chunk up to the first IDAT (nothing is inflated); nullopt: no PNG signature.
inline std::optional<PngHeader> png_header(const std::string& path) {
  const unsigned char signature[8] = {137, 80, 78, 71, 13, 10, 26, 10};
  unsigned char head[8];
  std::ifstream in(path, std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(head), 8) || std::memcmp(head, signature, 8) != 0) return std::nullopt;
  PngHeader png;
  while (in.read(reinterpret_cast<char*>(head), 8)) {
    const uint32_t length = big_endian(head);
    const std::string type(reinterpret_cast<char*>(head + 4), 4);
    if (type == "IDAT" || type == "IEND") break;
    if ((type != "IHDR" && type != "PLTE") || length > 1024) {
      in.seekg(length + 4, std::ios::cur);  // the chunk and its CRC
      continue;
    }
    std::vector<unsigned char> data(length);
    if (!in.read(reinterpret_cast<char*>(data.data()), length)) break;
    in.seekg(4, std::ios::cur);
    if (type == "IHDR" && length >= 10) png.bit_depth = data[8], png.colour_type = data[9];
    if (type == "PLTE") png.has_palette = length >= 3;
  }
  return png;
}

// CRC-32 (ISO-HDLC, as PNG chunks carry it) of `bytes`.
inline uint32_t crc32(const std::string& bytes) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char b : bytes) {
    crc ^= b;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

inline void append_big_endian(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xFF);
}

// The PNG `file` with every PLTE replaced by 256 entries, entry i the colour (i, 0, 0), and tRNS dropped: each index
// decodes to its own colour, the indices past the file's PLTE too (stb_image leaves theirs uninitialised), and
// entries that shared a colour no longer do. A malformed chunk ends the walk; the rest is copied for stb_image to judge.
inline std::string with_index_palette(const std::string& file) {
  std::string plte = "PLTE";
  for (int i = 0; i < 256; ++i) plte += {static_cast<char>(i), '\0', '\0'};
  std::string out = file.substr(0, 8);
  size_t at = 8;
  while (at + 12 <= file.size()) {
    const uint32_t length = big_endian(reinterpret_cast<const unsigned char*>(file.data() + at));
    if (length > file.size() - at - 12) break;
    const std::string type = file.substr(at + 4, 4);
    if (type == "PLTE") {
      append_big_endian(out, 768);
      out += plte;
      append_big_endian(out, crc32(plte));  // stb_image skips CRCs; the rewritten file is a valid PNG all the same
    } else if (type != "tRNS") {
      out.append(file, at, 12 + length);
    }
    at += 12 + length;
  }
  return out.append(file, at, std::string::npos);
}

}  // namespace segkd
