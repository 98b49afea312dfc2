#include "data/image.h"

#include <fcntl.h>
#include <stb/stb_image.h>  // implemented by Debian's libstb
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "engine/error.h"

namespace s2h::data {

namespace {

// Larger images are refused rather than allocated (a corrupt header can claim 65535 x 65535).
constexpr int64_t kMaxPixels = int64_t{1} << 28;

const char* format_name(ImageFormat f) { return f == ImageFormat::Jpeg ? "JPEG" : "PNG"; }

// One TurboJPEG decompressor per thread, created on first use. TurboJPEG 2.1
// leaves a handle in a bad state after an error (the next header read fails
// with stale tables), so a failing call takes the error message and replaces
// the handle.
class TjHandle {
 public:
  TjHandle() : h_(tjInitDecompress()) {}
  ~TjHandle() {
    if (h_) tjDestroy(h_);
  }
  TjHandle(const TjHandle&) = delete;
  TjHandle& operator=(const TjHandle&) = delete;
  tjhandle get() const {
    S2H_CHECK(h_ != nullptr, "TurboJPEG: cannot create a decompressor: {}", tjGetErrorStr2(nullptr));
    return h_;
  }
  // The last error's message, and a fresh handle for the next call.
  std::string take_error() {
    std::string msg = tjGetErrorStr2(h_);
    tjDestroy(h_);
    h_ = tjInitDecompress();
    return msg;
  }

 private:
  tjhandle h_;
};

TjHandle& thread_decompressor() {
  thread_local TjHandle handle;
  return handle;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// Whether a JPEG's marker segments lead to a scan that is followed by the
// end-of-image marker. Segments before the first scan are skipped by their
// lengths (so an EOI inside an EXIF thumbnail does not count); inside
// entropy-coded data FF is always followed by 00 or a restart/scan marker, so
// the first FF D9 after the scan starts is the real end of the image.
bool jpeg_has_end(const uint8_t* b, size_t n) {
  size_t p = 2;  // after SOI
  while (p + 4 <= n) {
    if (b[p] != 0xFF) return false;
    const uint8_t marker = b[p + 1];
    if (marker == 0xFF) {  // fill byte
      ++p;
      continue;
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // markers without a length
      p += 2;
      continue;
    }
    if (marker == 0xD9) return false;  // end of image before any scan
    const size_t len = (size_t{b[p + 2]} << 8) | b[p + 3];
    if (marker == 0xDA) {  // start of scan: look for the EOI after its header
      for (size_t q = p + 2 + len; q + 1 < n; ++q)
        if (b[q] == 0xFF && b[q + 1] == 0xD9) return true;
      return false;
    }
    p += 2 + len;
  }
  return false;
}

// Whether a PNG's chunks reach IEND without running past the end of the data.
bool png_has_end(const uint8_t* b, size_t n) {
  size_t p = 8;  // after the signature
  while (p + 12 <= n) {
    const size_t len = be32(b + p);
    if (std::memcmp(b + p + 4, "IEND", 4) == 0) return true;
    if (len > n - p - 12) return false;
    p += 12 + len;  // length, type, data, CRC
  }
  return false;
}

}  // namespace

ImageFormat detect_format(const uint8_t* bytes, size_t n) {
  static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (n >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF) return ImageFormat::Jpeg;
  if (n >= 8 && std::memcmp(bytes, png_sig, 8) == 0) return ImageFormat::Png;
  return ImageFormat::Unknown;
}

ImageInfo probe_image(const uint8_t* bytes, size_t n, const std::string& what) {
  ImageInfo info;
  info.format = detect_format(bytes, n);
  if (info.format == ImageFormat::Unknown) {
    S2H_CHECK(n > 0, "{}: empty file, expected a JPEG or PNG image", what);
    S2H_FAIL("{}: not a JPEG or PNG image (unknown leading bytes)", what);
  }
  if (info.format == ImageFormat::Jpeg) {
    TjHandle& h = thread_decompressor();
    int w = 0, ht = 0, subsamp = 0, colorspace = 0;
    if (tjDecompressHeader3(h.get(), bytes, static_cast<unsigned long>(n), &w, &ht, &subsamp, &colorspace) != 0)
      S2H_FAIL("{}: corrupt JPEG header: {}", what, h.take_error());
    S2H_CHECK(colorspace != TJCS_CMYK && colorspace != TJCS_YCCK, "{}: CMYK JPEG images are not supported", what);
    info.h = ht;
    info.w = w;
    info.c = colorspace == TJCS_GRAY ? 1 : 3;
    S2H_CHECK(jpeg_has_end(bytes, n), "{}: truncated JPEG: no end-of-image marker after the image data", what);
  } else {
    S2H_CHECK(n <= static_cast<size_t>(INT_MAX), "{}: PNG file of {} bytes is too large", what, n);
    int w = 0, ht = 0, comp = 0;
    if (!stbi_info_from_memory(bytes, static_cast<int>(n), &w, &ht, &comp))
      S2H_FAIL("{}: corrupt PNG header: {}", what, stbi_failure_reason());
    info.h = ht;
    info.w = w;
    info.c = comp;
    S2H_CHECK(png_has_end(bytes, n), "{}: truncated PNG: the data ends before the IEND chunk", what);
  }
  S2H_CHECK(info.h > 0 && info.w > 0 && info.h * info.w <= kMaxPixels, "{}: {} image of {}x{} pixels is not supported",
            what, format_name(info.format), info.w, info.h);
  return info;
}

Image decode_image(const uint8_t* bytes, size_t n, const std::string& what, int64_t channels) {
  S2H_CHECK(channels == 1 || channels == 3, "{}: cannot decode into {} channels (1 or 3)", what, channels);
  const ImageInfo info = probe_image(bytes, n, what);
  Image img;
  img.h = info.h;
  img.w = info.w;
  img.c = channels;
  if (info.format == ImageFormat::Jpeg) {
    img.pixels.resize(static_cast<size_t>(img.h * img.w * img.c));
    TjHandle& h = thread_decompressor();
    const int pf = channels == 3 ? TJPF_RGB : TJPF_GRAY;
    // Warnings (e.g. "extraneous bytes before marker") still give a full
    // image, as in PIL; truncation was ruled out by probe_image.
    if (tjDecompress2(h.get(), bytes, static_cast<unsigned long>(n), img.pixels.data(), static_cast<int>(img.w), 0,
                      static_cast<int>(img.h), pf, 0) != 0) {
      const bool fatal = tjGetErrorCode(h.get()) == TJERR_FATAL;
      const std::string msg = h.take_error();
      if (fatal) S2H_FAIL("{}: corrupt JPEG data: {}", what, msg);
    }
  } else {
    int w = 0, ht = 0, comp = 0;
    uint8_t* p = stbi_load_from_memory(bytes, static_cast<int>(n), &w, &ht, &comp, static_cast<int>(channels));
    if (!p) S2H_FAIL("{}: corrupt PNG data: {}", what, stbi_failure_reason());
    img.pixels.assign(p, p + static_cast<size_t>(img.h * img.w * img.c));
    stbi_image_free(p);
  }
  return img;
}

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) S2H_FAIL("{}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    S2H_FAIL("{}: cannot read: {}", path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    S2H_FAIL("{}: cannot read: {}", path, S_ISDIR(st.st_mode) ? "it is a directory" : "not a regular file");
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t r = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      const int err = errno;
      ::close(fd);
      S2H_FAIL("{}: read error after {} of {} bytes: {}", path, done, bytes.size(),
               r == 0 ? "unexpected end of file" : std::strerror(err));
    }
    done += static_cast<size_t>(r);
  }
  ::close(fd);
  return bytes;
}

std::vector<std::string> class_names(const Source& source) {
  if (const auto* named = dynamic_cast<const ClassNames*>(&source)) return named->class_names();
  return {};
}

}  // namespace s2h::data
