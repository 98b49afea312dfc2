#include "data/image_folder.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <filesystem>
#include <limits>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_map>

#include "engine/error.h"

namespace s2h::data {

namespace {

namespace fs = std::filesystem;

// Encoded images in memory; read() decodes and transforms one of them.
class EncodedImageSource : public Source, public ClassNames {
 public:
  EncodedImageSource(std::string name, std::vector<std::string> paths, std::vector<std::vector<uint8_t>> files,
                     std::vector<int64_t> labels, std::vector<std::string> names, const ImageTransform& tf)
      : name_(std::move(name)),
        paths_(std::move(paths)),
        files_(std::move(files)),
        labels_(std::move(labels)),
        names_(std::move(names)),
        tf_(tf) {}
  std::string name() const override { return name_; }
  int64_t size() const override { return static_cast<int64_t>(files_.size()); }
  int64_t num_classes() const override { return static_cast<int64_t>(names_.size()); }
  int64_t label(int64_t i) const override {
    check_index(i);
    return labels_[static_cast<size_t>(i)];
  }
  SampleSpec sample_spec() const override { return {DType::F32, {tf_.out_size, tf_.out_size, 3}}; }
  void read(int64_t i, void* out, Generator& rng) const override {
    check_index(i);
    const std::vector<uint8_t>& f = files_[static_cast<size_t>(i)];
    const Image img = decode_image(f.data(), f.size(), paths_[static_cast<size_t>(i)], 3);
    apply_transform(img, tf_, rng, static_cast<float*>(out));
  }
  const std::vector<std::string>& class_names() const override { return names_; }

 private:
  void check_index(int64_t i) const {
    S2H_CHECK(i >= 0 && i < size(), "{}: sample {} is out of range ({} samples)", name_, i, size());
  }
  std::string name_;
  std::vector<std::string> paths_;
  std::vector<std::vector<uint8_t>> files_;
  std::vector<int64_t> labels_;
  std::vector<std::string> names_;
  ImageTransform tf_;
};

// The entries of a folder; an error names the folder if it cannot be listed.
std::vector<fs::directory_entry> list_dir(const fs::path& dir) {
  std::vector<fs::directory_entry> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) out.push_back(*it);
  S2H_CHECK(!ec, "{}: cannot list: {}", dir.string(), ec.message());
  return out;
}

bool hidden(const fs::path& p) { return p.filename().string().starts_with('.'); }

bool has_image_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

// The image files directly in `dir`, sorted; an error names `dir` if it is missing or holds none.
std::vector<std::string> list_images(const fs::path& dir) {
  std::error_code ec;
  S2H_CHECK(fs::is_directory(dir, ec), "{}: missing folder", dir.string());
  std::vector<std::string> out;
  for (const fs::directory_entry& e : list_dir(dir))
    if (!hidden(e.path()) && has_image_extension(e.path()) && e.is_regular_file(ec)) out.push_back(e.path().string());
  S2H_CHECK(!out.empty(), "{}: empty class folder: no .jpg, .jpeg or .png files", dir.string());
  std::sort(out.begin(), out.end());
  return out;
}

// Lines of a text file, without line ends.
std::vector<std::string> read_lines(const std::string& path) {
  const std::vector<uint8_t> bytes = read_file_bytes(path);
  std::vector<std::string> lines;
  std::string cur;
  for (uint8_t b : bytes) {
    if (b == '\n') {
      lines.push_back(std::move(cur));
      cur.clear();
    } else if (b != '\r') {
      cur.push_back(static_cast<char>(b));
    }
  }
  if (!cur.empty()) lines.push_back(std::move(cur));
  return lines;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

}  // namespace

SourcePtr load_image_files(const std::string& name, std::vector<std::string> paths, std::vector<int64_t> labels,
                           std::vector<std::string> names, const ImageTransform& tf) {
  S2H_CHECK(paths.size() == labels.size(), "{}: {} files but {} labels", name, paths.size(), labels.size());
  S2H_CHECK(!paths.empty(), "{}: no image files", name);
  check_transform(tf, 3);
  for (size_t i = 0; i < labels.size(); ++i)
    S2H_CHECK(labels[i] >= 0 && labels[i] < static_cast<int64_t>(names.size()),
              "{}: label {} is out of range ({} classes)", paths[i], labels[i], names.size());
  // Read and probe with a few threads. Files are claimed in increasing order,
  // so after a failure every unclaimed file comes later: stopping there and
  // reporting the first failing file keeps the message deterministic.
  std::vector<std::vector<uint8_t>> files(paths.size());
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  size_t error_index = std::numeric_limits<size_t>::max();
  std::string error_message;
  auto work = [&] {
    for (;;) {
      if (failed.load(std::memory_order_relaxed)) return;
      const size_t i = next.fetch_add(1);
      if (i >= paths.size()) return;
      try {
        files[i] = read_file_bytes(paths[i]);
        probe_image(files[i].data(), files[i].size(), paths[i]);
      } catch (const std::exception& e) {
        std::lock_guard lock(mu);
        if (i < error_index) {
          error_index = i;
          error_message = e.what();
        }
        failed = true;
      }
    }
  };
  const size_t n_threads = std::min<size_t>(8, std::max<size_t>(1, paths.size() / 256));
  std::vector<std::thread> threads;
  for (size_t t = 1; t < n_threads; ++t) {
    try {
      threads.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no more threads to be had: the ones running (and this one) do the rest
    }
  }
  work();
  for (std::thread& t : threads) t.join();
  if (failed) S2H_FAIL("{}", error_message);
  return std::make_shared<EncodedImageSource>(name, std::move(paths), std::move(files), std::move(labels),
                                              std::move(names), tf);
}

std::vector<std::string> image_folder_classes(const std::string& dir) {
  std::error_code ec;
  S2H_CHECK(fs::is_directory(dir, ec), "{}: image folder not found", dir);
  std::vector<std::string> folders;
  for (const fs::directory_entry& e : list_dir(dir))
    if (!hidden(e.path()) && e.is_directory(ec)) folders.push_back(e.path().filename().string());
  S2H_CHECK(!folders.empty(), "{}: no class folders (expected {}/<class>/<image files>)", dir, dir);
  std::sort(folders.begin(), folders.end());
  return folders;
}

SourcePtr load_image_folder(const std::string& dir, const ImageTransform& tf, const std::string& name,
                            const std::vector<std::string>& classes) {
  const std::vector<std::string> folders = image_folder_classes(dir);
  std::vector<std::string> names = classes.empty() ? folders : classes;
  std::unordered_map<std::string, int64_t> index;
  for (size_t k = 0; k < names.size(); ++k)
    S2H_CHECK(index.emplace(names[k], static_cast<int64_t>(k)).second, "{}: class \"{}\" is listed twice", dir,
              names[k]);
  std::vector<std::string> paths;
  std::vector<int64_t> labels;
  for (const std::string& f : folders) {
    const fs::path folder = fs::path(dir) / f;
    const auto it = index.find(f);
    S2H_CHECK(it != index.end(), "{}: class folder \"{}\" is not one of the {} classes of the train split",
              folder.string(), f, names.size());
    for (std::string& p : list_images(folder)) {
      paths.push_back(std::move(p));
      labels.push_back(it->second);
    }
  }
  return load_image_files(name, std::move(paths), std::move(labels), std::move(names), tf);
}

SourcePtr load_tiny_imagenet(const std::string& root, const std::string& split, const ImageTransform& tf) {
  S2H_CHECK(split == "train" || split == "val", "Tiny ImageNet split must be train or val, got \"{}\"", split);
  const fs::path r(root);
  const std::string wnids_file = (r / "wnids.txt").string();
  std::error_code ec;
  S2H_CHECK(fs::is_regular_file(wnids_file, ec), "{}: missing; a Tiny ImageNet folder holds wnids.txt, train/, val/",
            wnids_file);
  std::vector<std::string> wnids;
  std::unordered_map<std::string, int64_t> index;
  const std::vector<std::string> lines = read_lines(wnids_file);
  for (size_t l = 0; l < lines.size(); ++l) {
    const std::string w = trim(lines[l]);
    if (w.empty()) continue;
    S2H_CHECK(index.emplace(w, static_cast<int64_t>(wnids.size())).second, "{}:{}: class {} is listed twice",
              wnids_file, l + 1, w);
    wnids.push_back(w);
  }
  S2H_CHECK(!wnids.empty(), "{}: no classes listed", wnids_file);

  std::vector<std::string> paths;
  std::vector<int64_t> labels;
  if (split == "train") {
    for (size_t k = 0; k < wnids.size(); ++k)
      for (std::string& p : list_images(r / "train" / wnids[k] / "images")) {
        paths.push_back(std::move(p));
        labels.push_back(static_cast<int64_t>(k));
      }
  } else {
    const std::string ann = (r / "val" / "val_annotations.txt").string();
    S2H_CHECK(fs::is_regular_file(ann, ec), "{}: missing", ann);
    const fs::path images = r / "val" / "images";
    const std::vector<std::string> ann_lines = read_lines(ann);
    for (size_t l = 0; l < ann_lines.size(); ++l) {
      if (trim(ann_lines[l]).empty()) continue;
      std::vector<std::string> cols;
      size_t b = 0;
      for (;;) {
        const size_t e = ann_lines[l].find('\t', b);
        cols.push_back(ann_lines[l].substr(b, e == std::string::npos ? std::string::npos : e - b));
        if (e == std::string::npos) break;
        b = e + 1;
      }
      S2H_CHECK(cols.size() == 6, "{}:{}: expected 6 tab-separated columns (file, wnid, x, y, w, h), got {}", ann,
                l + 1, cols.size());
      S2H_CHECK(!cols[0].empty(), "{}:{}: empty file name", ann, l + 1);
      const auto it = index.find(cols[1]);
      S2H_CHECK(it != index.end(), "{}:{}: unknown class \"{}\" (not in {})", ann, l + 1, cols[1], wnids_file);
      paths.push_back((images / cols[0]).string());
      labels.push_back(it->second);
    }
    S2H_CHECK(!paths.empty(), "{}: no annotations", ann);
  }
  return load_image_files("tiny-imagenet/" + split, std::move(paths), std::move(labels), std::move(wnids), tf);
}

}  // namespace s2h::data
