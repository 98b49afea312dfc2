#include "data/idx.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "engine/error.h"

namespace s2h::data {

namespace {

// Writes gzip (or, with mode "wbT", raw) files through zlib's gz* interface.
class GzWriter {
 public:
  GzWriter(const std::string& path, const char* mode) : path_(path) {
    errno = 0;
    f_ = gzopen(path.c_str(), mode);
    if (!f_) S2H_FAIL("{}: cannot open for writing: {}", path, errno ? std::strerror(errno) : "out of memory");
  }
  ~GzWriter() {
    if (f_) gzclose(f_);
  }
  GzWriter(const GzWriter&) = delete;
  GzWriter& operator=(const GzWriter&) = delete;
  void write(const void* src, size_t n) {
    if (n && gzwrite(f_, src, static_cast<unsigned>(n)) != static_cast<int>(n)) S2H_FAIL("{}: write failed", path_);
  }
  void close() {
    const int r = gzclose(f_);
    f_ = nullptr;
    if (r != Z_OK) S2H_FAIL("{}: could not finish writing", path_);
  }

 private:
  std::string path_;
  gzFile f_ = nullptr;
};

// The whole content of a file, gunzipped when it starts with the gzip magic.
// inflate is driven directly (not gzread) so that a stream cut anywhere, even
// inside its CRC trailer, is reported as truncated.
std::string read_decompressed(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) S2H_FAIL("{}: cannot open: {}", path, std::strerror(errno));
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) S2H_FAIL("{}: read error", path);
  if (raw.size() < 2 || static_cast<uint8_t>(raw[0]) != 0x1f || static_cast<uint8_t>(raw[1]) != 0x8b) return raw;

  std::string out;
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) S2H_FAIL("{}: zlib initialisation failed", path);
  zs.next_in = reinterpret_cast<Bytef*>(raw.data());
  zs.avail_in = static_cast<uInt>(raw.size());
  int ret = Z_OK;
  while (true) {
    if (out.size() - zs.total_out < (1u << 20)) out.resize(std::max<size_t>(out.size() * 2, 1u << 22));
    zs.next_out = reinterpret_cast<Bytef*>(out.data() + zs.total_out);
    zs.avail_out = static_cast<uInt>(out.size() - zs.total_out);
    ret = inflate(&zs, Z_NO_FLUSH);
    if (ret == Z_STREAM_END) {
      // Concatenated gzip members are allowed; anything else after the end is not.
      if (zs.avail_in == 0) break;
      if (zs.avail_in < 2 || zs.next_in[0] != 0x1f || zs.next_in[1] != 0x8b) {
        inflateEnd(&zs);
        S2H_FAIL("{}: unexpected bytes after the end of the gzip data", path);
      }
      inflateReset(&zs);
      continue;
    }
    if (ret == Z_BUF_ERROR && zs.avail_in == 0) {
      inflateEnd(&zs);
      S2H_FAIL("{}: truncated: the gzip data ends early ({} bytes decoded)", path, zs.total_out);
    }
    if (ret != Z_OK && ret != Z_BUF_ERROR) {
      const std::string why = zs.msg ? zs.msg : "error " + std::to_string(ret);
      inflateEnd(&zs);
      S2H_FAIL("{}: corrupt gzip data: {}", path, why);
    }
  }
  out.resize(zs.total_out);
  inflateEnd(&zs);
  return out;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

}  // namespace

IdxArray read_idx(const std::string& path, int expected_ndim) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) S2H_FAIL("{}: file not found", path);
  if (std::filesystem::is_directory(path, ec)) S2H_FAIL("{}: is a directory, not an idx file", path);
  const std::string bytes = read_decompressed(path);
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  S2H_CHECK(bytes.size() >= 4, "{}: truncated: the file ends inside the 4-byte magic number", path);
  const uint32_t magic = be32(p);
  const uint32_t expected = 0x0800u | static_cast<uint32_t>(expected_ndim);
  S2H_CHECK(magic == expected,
            "{}: wrong magic number 0x{:08x} (expected 0x{:08x}: unsigned bytes in {} dimension{}; is this the right "
            "idx file?)",
            path, magic, expected, expected_ndim, expected_ndim == 1 ? "" : "s");
  const size_t header = 4 + 4 * static_cast<size_t>(expected_ndim);
  S2H_CHECK(bytes.size() >= header, "{}: truncated: the file ends inside the header ({} of {} bytes)", path,
            bytes.size(), header);
  IdxArray out;
  uint64_t total = 1;
  for (int d = 0; d < expected_ndim; ++d) {
    const uint32_t v = be32(p + 4 + 4 * d);
    out.dims.push_back(v);
    S2H_CHECK(!__builtin_mul_overflow(total, uint64_t{v}, &total) && total < (uint64_t{1} << 34),
              "{}: implausible dimensions in the header", path);
  }
  const uint64_t have = bytes.size() - header;
  S2H_CHECK(have >= total, "{}: truncated: the header promises {} data bytes, the file has {}", path, total, have);
  S2H_CHECK(have == total, "{}: unexpected bytes after the {} data bytes the header promises", path, total);
  out.bytes.assign(p + header, p + header + total);
  return out;
}

void write_idx(const std::string& path, const std::vector<int64_t>& dims, const std::vector<uint8_t>& bytes) {
  const bool gz = path.size() > 3 && path.ends_with(".gz");
  GzWriter f(path, gz ? "wb" : "wbT");
  uint8_t head[4] = {0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  f.write(head, 4);
  for (int64_t d : dims) {
    uint8_t b[4] = {static_cast<uint8_t>(d >> 24), static_cast<uint8_t>(d >> 16), static_cast<uint8_t>(d >> 8),
                    static_cast<uint8_t>(d)};
    f.write(b, 4);
  }
  f.write(bytes.data(), bytes.size());
  f.close();
}

Dataset load_fashion_mnist(const std::string& root, const std::string& split) {
  S2H_CHECK(split == "train" || split == "test", "fashion-mnist: unknown split '{}' (expected train or test)", split);
  std::error_code ec;
  S2H_CHECK(std::filesystem::is_directory(root, ec),
            "fashion-mnist: data root {} is not a directory (install the Debian package dataset-fashion-mnist, or "
            "pass --data-root)",
            root);
  const std::string prefix = root + "/" + (split == "train" ? "train" : "t10k");
  const IdxArray images = read_idx(prefix + "-images-idx3-ubyte.gz", 3);
  const IdxArray labels = read_idx(prefix + "-labels-idx1-ubyte.gz", 1);
  S2H_CHECK(images.dims[0] == labels.dims[0], "fashion-mnist: {} has {} images but {} has {} labels",
            prefix + "-images-idx3-ubyte.gz", images.dims[0], prefix + "-labels-idx1-ubyte.gz", labels.dims[0]);
  const int64_t n = images.dims[0], h = images.dims[1], w = images.dims[2];
  S2H_CHECK(h == 28 && w == 28, "fashion-mnist: {} holds {}x{} images, expected 28x28",
            prefix + "-images-idx3-ubyte.gz", h, w);
  Dataset ds;
  ds.name = "fashion-mnist/" + split;
  ds.num_classes = 10;
  ds.images = Tensor::empty({n, h, w, 1});
  ds.labels = Tensor::empty({n}, DType::I64);
  constexpr float kMean = 0.2860f, kStd = 0.3530f;
  float* ip = ds.images.data<float>();
  for (size_t i = 0; i < images.bytes.size(); ++i) ip[i] = (images.bytes[i] / 255.0f - kMean) / kStd;
  int64_t* lp = ds.labels.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    S2H_CHECK(labels.bytes[i] < 10, "{}: label {} at position {} is outside 0..9", prefix + "-labels-idx1-ubyte.gz",
              labels.bytes[i], i);
    lp[i] = labels.bytes[i];
  }
  return ds;
}

}  // namespace s2h::data
