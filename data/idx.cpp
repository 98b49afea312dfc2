#include "data/idx.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "engine/error.h"

namespace s2h::data {

namespace {

class GzFile {
 public:
  explicit GzFile(const std::string& path, const char* mode) : path_(path) {
    errno = 0;
    f_ = gzopen(path.c_str(), mode);
    if (!f_) S2H_FAIL("{}: cannot open: {}", path, errno ? std::strerror(errno) : "out of memory");
  }
  ~GzFile() {
    if (f_) gzclose(f_);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  // Reads up to n bytes; returns how many were read. Throws on a decode error.
  size_t read(void* dst, size_t n) {
    size_t done = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
      const int r = gzread(f_, static_cast<char*>(dst) + done, chunk);
      if (r < 0) {
        int err = 0;
        const char* msg = gzerror(f_, &err);
        S2H_FAIL("{}: corrupt or truncated gzip data: {}", path_, msg ? msg : "read error");
      }
      if (r == 0) break;
      done += static_cast<size_t>(r);
    }
    return done;
  }
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

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

}  // namespace

IdxArray read_idx(const std::string& path, int expected_ndim) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) S2H_FAIL("{}: file not found", path);
  GzFile f(path, "rb");
  uint8_t head[4];
  const size_t got = f.read(head, 4);
  S2H_CHECK(got == 4, "{}: truncated: the file ends inside the 4-byte magic number", path);
  const uint32_t magic = be32(head);
  const uint32_t expected = 0x0800u | static_cast<uint32_t>(expected_ndim);
  S2H_CHECK(magic == expected,
            "{}: wrong magic number 0x{:08x} (expected 0x{:08x}: unsigned bytes in {} dimension{}; is this the right "
            "idx file?)",
            path, magic, expected, expected_ndim, expected_ndim == 1 ? "" : "s");
  IdxArray out;
  uint64_t total = 1;
  for (int d = 0; d < expected_ndim; ++d) {
    uint8_t b[4];
    S2H_CHECK(f.read(b, 4) == 4, "{}: truncated: the file ends inside the header (dimension {} of {})", path, d + 1,
              expected_ndim);
    const uint32_t v = be32(b);
    out.dims.push_back(v);
    total *= v;
  }
  S2H_CHECK(total < (uint64_t{1} << 34), "{}: implausible dimensions in the header", path);
  out.bytes.resize(total);
  const size_t n = f.read(out.bytes.data(), total);
  S2H_CHECK(n == total, "{}: truncated: the header promises {} data bytes, the file has {}", path, total, n);
  uint8_t extra;
  S2H_CHECK(f.read(&extra, 1) == 0, "{}: unexpected bytes after the {} data bytes the header promises", path, total);
  return out;
}

void write_idx(const std::string& path, const std::vector<int64_t>& dims, const std::vector<uint8_t>& bytes) {
  const bool gz = path.size() > 3 && path.ends_with(".gz");
  GzFile f(path, gz ? "wb" : "wbT");
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
