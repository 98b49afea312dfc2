#include "engine/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace s2h {

namespace {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

constexpr uint64_t kMaxHeader = 100u << 20;  // 100 MiB, as the reference implementation

std::string sys_error() { return std::strerror(errno); }

}  // namespace

const Tensor& SafetensorsFile::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  S2H_FAIL("{}: no tensor named '{}'", path, name);
}

bool SafetensorsFile::contains(const std::string& name) const {
  return std::any_of(tensors.begin(), tensors.end(), [&](const auto& nt) { return nt.first == name; });
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) S2H_FAIL("{}: directory {} does not exist", path, dir.string());
  const std::string tmp = path + fmt::format(".tmp.{}", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) S2H_FAIL("{}: cannot create temporary file {}: {}", path, tmp, sys_error());
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      const std::string why = sys_error();
      ::close(fd);
      ::unlink(tmp.c_str());
      S2H_FAIL("{}: write failed: {}", path, why);
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const std::string why = sys_error();
    ::unlink(tmp.c_str());
    S2H_FAIL("{}: could not flush to disk: {}", path, why);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = sys_error();
    ::unlink(tmp.c_str());
    S2H_FAIL("{}: could not rename the temporary file into place: {}", path, why);
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    S2H_CHECK(!name.empty() && name != "__metadata__", "{}: invalid tensor name '{}'", path, name);
    S2H_CHECK(!header.contains(name), "{}: tensor name '{}' appears twice", path, name);
    Tensor c = t.detach().contiguous().to(Device::cpu());
    const uint64_t nbytes = static_cast<uint64_t>(c.numel()) * dtype_size(c.dtype());
    header[name] = {{"dtype", dtype_safetensors_name(c.dtype())},
                    {"shape", c.shape()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    data.push_back(c);
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // align the data to 8 bytes
  std::string bytes;
  bytes.reserve(8 + h.size() + offset);
  const uint64_t hlen = h.size();
  bytes.append(reinterpret_cast<const char*>(&hlen), 8);
  bytes += h;
  for (const Tensor& c : data)
    bytes.append(static_cast<const char*>(c.raw_data()), static_cast<size_t>(c.numel()) * dtype_size(c.dtype()));
  write_file_atomically(path, bytes);
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) S2H_FAIL("{}: is a directory, not a safetensors file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) S2H_FAIL("{}: cannot open: {}", path, sys_error());
  in.seekg(0, std::ios::end);
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  S2H_CHECK(file_size >= 8, "{}: not a safetensors file (only {} bytes, the header length alone takes 8)", path,
            file_size);
  uint64_t hlen = 0;
  in.read(reinterpret_cast<char*>(&hlen), 8);
  S2H_CHECK(hlen <= kMaxHeader && hlen <= file_size - 8,
            "{}: not a safetensors file or truncated (header length {} for a file of {} bytes)", path, hlen, file_size);
  std::string htext(hlen, '\0');
  in.read(htext.data(), static_cast<std::streamsize>(hlen));
  S2H_CHECK(in.good(), "{}: could not read the header", path);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(htext);
  } catch (const nlohmann::json::exception& e) {
    S2H_FAIL("{}: the header is not valid JSON: {}", path, e.what());
  }
  S2H_CHECK(header.is_object(), "{}: the header is not a JSON object", path);
  const uint64_t data_size = file_size - 8 - hlen;

  SafetensorsFile file;
  file.path = path;
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      S2H_CHECK(v.is_object(), "{}: __metadata__ must be an object of strings", path);
      for (auto m = v.begin(); m != v.end(); ++m) {
        S2H_CHECK(m.value().is_string(), "{}: __metadata__ entry '{}' is not a string", path, m.key());
        file.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    S2H_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
              "{}: tensor '{}' needs dtype, shape and data_offsets", path, name);
    Entry e;
    e.name = name;
    S2H_CHECK(v["dtype"].is_string(), "{}: tensor '{}': dtype is not a string", path, name);
    try {
      e.dtype = dtype_from_safetensors_name(v["dtype"].get<std::string>());
    } catch (const Error& err) {
      S2H_FAIL("{}: tensor '{}': {}", path, name, err.what());
    }
    S2H_CHECK(v["shape"].is_array(), "{}: tensor '{}': shape is not an array", path, name);
    for (const auto& d : v["shape"]) {
      S2H_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, "{}: tensor '{}': invalid shape entry", path, name);
      e.shape.push_back(d.get<int64_t>());
    }
    const auto& off = v["data_offsets"];
    S2H_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
              "{}: tensor '{}': data_offsets must be two non-negative integers", path, name);
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    // Element count and byte size, refusing sizes that overflow 64 bits.
    uint64_t expected = dtype_size(e.dtype);
    for (int64_t d : e.shape)
      S2H_CHECK(!__builtin_mul_overflow(expected, static_cast<uint64_t>(d), &expected) &&
                    expected <= static_cast<uint64_t>(INT64_MAX),
                "{}: tensor '{}': shape {} is too large", path, name, shape_str(e.shape));
    S2H_CHECK(e.begin <= e.end && e.end - e.begin == expected,
              "{}: tensor '{}': data_offsets [{}, {}] hold {} bytes, shape {} of {} needs {}", path, name, e.begin,
              e.end, e.end - e.begin, shape_str(e.shape), dtype_name(e.dtype), expected);
    S2H_CHECK(e.end <= data_size, "{}: truncated: tensor '{}' ends at byte {} of the data, which has only {}", path,
              name, e.end, data_size);
    entries.push_back(std::move(e));
  }
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // Non-empty tensors must not share bytes (empty ones occupy none).
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin == e.end) continue;
    S2H_CHECK(!prev || e.begin >= prev->end, "{}: tensors '{}' and '{}' overlap", path, prev->name, e.name);
    prev = &e;
  }
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    in.seekg(static_cast<std::streamoff>(8 + hlen + e.begin));
    in.read(static_cast<char*>(t.raw_data()), static_cast<std::streamsize>(e.end - e.begin));
    S2H_CHECK(in.good() || e.end == e.begin, "{}: could not read tensor '{}'", path, e.name);
    file.tensors.emplace_back(e.name, t);
  }
  return file;
}

}  // namespace s2h
