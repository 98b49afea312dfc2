#include "data/text.h"

#include <fmt/ranges.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <thread>
#include <unordered_map>

#include "engine/error.h"
#include "engine/safetensors.h"

namespace s2h::data {

namespace fs = std::filesystem;

// ------------------------------------------------------------------ Tokenizer
namespace {

// Feeds in-memory sentences to the SentencePiece trainer.
class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>& sentences) : sentences_(sentences) {}
  bool done() const override { return i_ >= sentences_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return sentences_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& sentences_;
  size_t i_ = 0;
};

}  // namespace

Tokenizer Tokenizer::train(const std::vector<std::string>& sentences, int64_t vocab_size) {
  S2H_CHECK(vocab_size > 4 && vocab_size <= INT32_MAX, "SentencePiece vocabulary size {} must be in (4, 2^31)",
            vocab_size);
  S2H_CHECK(!sentences.empty(), "cannot train a SentencePiece model on no sentences");
  // One thread makes training deterministic (several threads sum the EM
  // statistics in a different order: other pieces). Every sentence is used
  // (input_sentence_size 0), so no random sampling takes place. minloglevel 2
  // silences SentencePiece's info and warning lines; errors come back as status.
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "unigram"},
      {"vocab_size", std::to_string(vocab_size)},
      {"hard_vocab_limit", "false"},
      {"pad_id", std::to_string(kPad)},
      {"unk_id", std::to_string(kUnk)},
      {"bos_id", std::to_string(kBos)},
      {"eos_id", std::to_string(kEos)},
      {"num_threads", "1"},
      {"input_sentence_size", "0"},
      {"minloglevel", "2"},
  };
  VectorIterator it(sentences);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  S2H_CHECK(status.ok(), "SentencePiece training ({} pieces, {} sentences) failed: {}", vocab_size, sentences.size(),
            status.ToString());
  return from_bytes(model, "the trained SentencePiece model");
}

Tokenizer Tokenizer::from_bytes(const std::string& bytes, const std::string& origin) {
  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  const auto status = sp->LoadFromSerializedProto(bytes);
  S2H_CHECK(status.ok(), "{}: not a SentencePiece model: {}", origin, status.ToString());
  S2H_CHECK(sp->pad_id() == kPad && sp->unk_id() == kUnk && sp->bos_id() == kBos && sp->eos_id() == kEos,
            "{}: the special ids are pad {}, unk {}, bos {}, eos {}; expected {}, {}, {}, {}", origin, sp->pad_id(),
            sp->unk_id(), sp->bos_id(), sp->eos_id(), kPad, kUnk, kBos, kEos);
  Tokenizer t;
  t.sp_ = std::move(sp);
  t.bytes_ = bytes;
  return t;
}

namespace {

std::string read_file(const std::string& path) {
  std::error_code ec;
  S2H_CHECK(!fs::is_directory(path, ec), "{}: is a directory, not a file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) S2H_FAIL("{}: cannot open: {}", path, std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) S2H_FAIL("{}: read error", path);
  return bytes;
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) { return from_bytes(read_file(path), path); }

int64_t Tokenizer::vocab_size() const {
  S2H_CHECK(sp_ != nullptr, "Tokenizer: no model loaded");
  return sp_->GetPieceSize();
}

std::vector<int32_t> Tokenizer::pieces(std::string_view text) const {
  S2H_CHECK(sp_ != nullptr, "Tokenizer: no model loaded");
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  S2H_CHECK(status.ok(), "SentencePiece could not encode \"{}\": {}", text, status.ToString());
  return {ids.begin(), ids.end()};
}

void Tokenizer::encode(std::string_view text, int64_t max_len, int32_t* out) const {
  S2H_CHECK(max_len >= 2, "max_len {} leaves no room for BOS and EOS", max_len);
  const std::vector<int32_t> p = pieces(text);
  const size_t n = std::min(p.size(), static_cast<size_t>(max_len - 2));
  int32_t* o = out;
  *o++ = kBos;
  o = std::copy_n(p.begin(), n, o);
  *o++ = kEos;
  std::fill(o, out + max_len, kPad);
}

void Tokenizer::encode_pair(std::string_view a, std::string_view b, int64_t max_len, int32_t* out) const {
  S2H_CHECK(max_len >= 3, "max_len {} leaves no room for BOS and two EOS", max_len);
  const std::vector<int32_t> pa = pieces(a), pb = pieces(b);
  const size_t budget = static_cast<size_t>(max_len - 3);
  size_t na = pa.size(), nb = pb.size();
  while (na + nb > budget) (na > nb ? na : nb)--;  // longest first; the second text on a tie
  int32_t* o = out;
  *o++ = kBos;
  o = std::copy_n(pa.begin(), na, o);
  *o++ = kEos;
  o = std::copy_n(pb.begin(), nb, o);
  *o++ = kEos;
  std::fill(o, out + max_len, kPad);
}

// ------------------------------------------------------------------ TSV parsing
namespace {

struct TaskFormat {
  const char* name;
  size_t columns;
  const char* header;  // the exact first line, or nullptr for none
  size_t a, b;         // columns of the sentences (b == columns: none)
  size_t label;        // column of the label
  bool text_labels;    // entailment / not_entailment instead of 0 / 1
};

const TaskFormat kTasks[] = {
    {"sst2", 2, "sentence\tlabel", 0, 2, 1, false},
    {"rte", 4, "index\tsentence1\tsentence2\tlabel", 1, 2, 3, true},
    {"cola", 4, nullptr, 3, 4, 1, false},
};

const TaskFormat& task_format(const std::string& task) {
  for (const TaskFormat& t : kTasks)
    if (task == t.name) return t;
  S2H_FAIL("unknown GLUE task \"{}\" (known: {})", task, fmt::join(glue_tasks(), ", "));
}

// Shows a header in messages with its tabs spelled out.
std::string show_tabs(std::string_view s) {
  std::string out;
  for (char c : s) out += c == '\t' ? std::string("<TAB>") : std::string(1, c);
  return out;
}

std::vector<GlueExample> parse_glue(const TaskFormat& f, const std::string& path, const std::string& bytes) {
  S2H_CHECK(!bytes.empty(), "{}: empty file (expected a GLUE {} TSV)", path, f.name);
  std::vector<GlueExample> out;
  std::vector<std::string_view> cols;
  size_t pos = 0;
  for (int64_t line_no = 1; pos < bytes.size(); ++line_no) {
    size_t end = bytes.find('\n', pos);
    if (end == std::string::npos) end = bytes.size();
    std::string_view line(bytes.data() + pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line_no == 1 && f.header) {
      S2H_CHECK(line == f.header, "{}:1: expected the header \"{}\", found \"{}\"", path, show_tabs(f.header),
                show_tabs(line.substr(0, 200)));
      continue;
    }
    cols.clear();
    for (size_t start = 0;;) {
      const size_t tab = line.find('\t', start);
      cols.push_back(line.substr(start, tab == std::string_view::npos ? std::string_view::npos : tab - start));
      if (tab == std::string_view::npos) break;
      start = tab + 1;
    }
    S2H_CHECK(cols.size() == f.columns, "{}:{}: expected {} tab-separated columns, found {}", path, line_no,
              f.columns, cols.size());
    const std::string_view v = cols[f.label];
    GlueExample ex;
    if (f.text_labels) {
      S2H_CHECK(v == "entailment" || v == "not_entailment",
                "{}:{}: bad label \"{}\" (expected entailment or not_entailment)", path, line_no, v);
      ex.label = v == "entailment" ? 0 : 1;
    } else {
      S2H_CHECK(v == "0" || v == "1", "{}:{}: bad label \"{}\" (expected 0 or 1)", path, line_no, v);
      ex.label = v == "1" ? 1 : 0;
    }
    ex.a = cols[f.a];
    if (f.b < f.columns) ex.b = cols[f.b];
    out.push_back(std::move(ex));
  }
  S2H_CHECK(!out.empty(), "{}: no examples after the header", path);
  return out;
}

}  // namespace

std::vector<std::string> glue_tasks() {
  std::vector<std::string> names;
  for (const TaskFormat& t : kTasks) names.emplace_back(t.name);
  return names;
}

std::vector<GlueExample> read_glue_tsv(const std::string& task, const std::string& path) {
  const TaskFormat& f = task_format(task);
  return parse_glue(f, path, read_file(path));
}

// ------------------------------------------------------------------ GLUE sources
namespace {

// Encoded examples of one split: int32 ids [N, max_len] in memory.
class GlueSource : public Source {
 public:
  GlueSource(std::string name, std::vector<int32_t> ids, std::vector<int64_t> labels, int64_t max_len,
             int64_t vocab_size)
      : name_(std::move(name)), ids_(std::move(ids)), labels_(std::move(labels)), max_len_(max_len),
        vocab_size_(vocab_size) {}
  std::string name() const override { return name_; }
  int64_t size() const override { return static_cast<int64_t>(labels_.size()); }
  int64_t num_classes() const override { return 2; }
  int64_t label(int64_t i) const override {
    S2H_CHECK(i >= 0 && i < size(), "{}: sample {} is out of range ({} samples)", name_, i, size());
    return labels_[static_cast<size_t>(i)];
  }
  SampleSpec sample_spec() const override { return {DType::I64, {max_len_}}; }
  int64_t vocab_size() const override { return vocab_size_; }
  void read(int64_t i, void* out, Generator& rng) const override {
    (void)rng;
    S2H_CHECK(i >= 0 && i < size(), "{}: sample {} is out of range ({} samples)", name_, i, size());
    const int32_t* src = ids_.data() + i * max_len_;
    std::copy_n(src, max_len_, static_cast<int64_t*>(out));
  }

 private:
  std::string name_;
  std::vector<int32_t> ids_;
  std::vector<int64_t> labels_;
  int64_t max_len_, vocab_size_;
};

// Encodes every example with a few threads (SentencePiece's Encode is const and thread-safe).
SourcePtr encode_split(const std::string& name, const std::vector<GlueExample>& examples, bool pairs,
                       const Tokenizer& tok, int64_t max_len) {
  const size_t n = examples.size(), len = static_cast<size_t>(max_len);
  std::vector<int32_t> ids(n * len);
  std::vector<int64_t> labels(n);
  const size_t workers = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 4);
  std::vector<std::string> errors(workers);
  std::vector<std::thread> threads;
  for (size_t w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      try {
        for (size_t i = w * n / workers; i < (w + 1) * n / workers; ++i) {
          const GlueExample& ex = examples[i];
          if (pairs)
            tok.encode_pair(ex.a, ex.b, max_len, ids.data() + i * len);
          else
            tok.encode(ex.a, max_len, ids.data() + i * len);
          labels[i] = ex.label;
        }
      } catch (const std::exception& e) {
        errors[w] = e.what();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::string& e : errors) S2H_CHECK(e.empty(), "{}: {}", name, e);
  return std::make_shared<GlueSource>(name, std::move(ids), std::move(labels), max_len, tok.vocab_size());
}

uint64_t fnv1a(uint64_t h, std::string_view bytes) {
  for (char c : bytes) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001B3ull;
  }
  return h;
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace

std::string text_cache_dir(const TextOptions& opt) {
  if (!opt.cache_dir.empty()) return opt.cache_dir;
  if (const std::string d = env("S2H_CACHE_DIR"); !d.empty()) return d;
  if (const std::string d = env("XDG_CACHE_HOME"); !d.empty()) return (fs::path(d) / "s2h").string();
  if (const std::string d = env("HOME"); !d.empty()) return (fs::path(d) / ".cache" / "s2h").string();
  S2H_FAIL("no folder to cache tokenizers in: set the cache dir option, S2H_CACHE_DIR, XDG_CACHE_HOME or HOME");
}

GlueData load_glue(const std::string& task, const std::string& dir, const TextOptions& opt) {
  const TaskFormat& f = task_format(task);
  S2H_CHECK(opt.max_len >= 3, "max_len {} is too short: a sample needs room for BOS, EOS and some text",
            opt.max_len);
  S2H_CHECK(opt.vocab_size > 4 && opt.vocab_size <= INT32_MAX, "vocabulary size {} must be in (4, 2^31)",
            opt.vocab_size);
  const std::string train_path = (fs::path(dir) / "train.tsv").string();
  const std::string dev_path = (fs::path(dir) / "dev.tsv").string();
  const std::string train_bytes = read_file(train_path);
  const std::vector<GlueExample> train = parse_glue(f, train_path, train_bytes);
  const std::vector<GlueExample> dev = read_glue_tsv(task, dev_path);
  const bool pairs = f.b < f.columns;

  // The cache name: the hash covers what the model depends on (bump "v1" when
  // the training recipe in Tokenizer::train changes).
  const std::string recipe = fmt::format("s2h glue tokenizer v1: task {}, unigram, {} pieces, pad 0 unk 1 bos 2 eos 3",
                                         task, opt.vocab_size);
  const uint64_t hash = fnv1a(fnv1a(0xCBF29CE484222325ull, recipe), train_bytes);
  const std::string cache_dir = text_cache_dir(opt);
  const std::string model_path = (fs::path(cache_dir) / fmt::format("{}-v{}-{:016x}.model", task, opt.vocab_size, hash))
                                     .string();

  GlueData out;
  out.tokenizer_path = model_path;
  std::optional<Tokenizer> tok;
  std::error_code ec;
  if (fs::is_regular_file(model_path, ec)) {
    try {
      tok = Tokenizer::load(model_path);
      out.tokenizer_cached = true;
    } catch (const Error& e) {  // a damaged cache entry is rebuilt, not fatal
      std::fprintf(stderr, "ignoring the cached tokenizer: %s\n", e.what());
    }
  }
  if (!tok) {
    // Check the cache folder before spending seconds on training.
    fs::create_directories(cache_dir, ec);
    std::error_code ec_dir;
    S2H_CHECK(fs::is_directory(cache_dir, ec_dir), "tokenizer cache folder {}: cannot create it: {}", cache_dir,
              ec ? ec.message() : "a file of that name is in the way");
    S2H_CHECK(::access(cache_dir.c_str(), W_OK) == 0, "tokenizer cache folder {} is not writable: {}", cache_dir,
              std::strerror(errno));
    std::vector<std::string> sentences;
    sentences.reserve(train.size() * (pairs ? 2 : 1));
    for (const GlueExample& ex : train) {
      sentences.push_back(ex.a);
      if (pairs) sentences.push_back(ex.b);
    }
    std::fprintf(stderr, "training a %lld-piece SentencePiece model on %s ... ", static_cast<long long>(opt.vocab_size),
                 train_path.c_str());
    const auto t0 = std::chrono::steady_clock::now();
    try {
      tok = Tokenizer::train(sentences, opt.vocab_size);
    } catch (const Error& e) {
      std::fprintf(stderr, "failed\n");
      S2H_FAIL("{}: {}", train_path, e.what());
    }
    try {
      write_file_atomically(model_path, tok->bytes());
    } catch (const Error& e) {
      std::fprintf(stderr, "failed\n");
      S2H_FAIL("tokenizer cache folder {} is not writable: {}", cache_dir, e.what());
    }
    std::fprintf(stderr, "cached at %s (%.1f s)\n", model_path.c_str(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }

  out.vocab_size = tok->vocab_size();
  out.train = encode_split(task + "/train", train, pairs, *tok, opt.max_len);
  out.dev = encode_split(task + "/dev", dev, pairs, *tok, opt.max_len);
  return out;
}

}  // namespace s2h::data
