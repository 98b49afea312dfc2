// GLUE text classification (SST-2, RTE, CoLA) from the original TSV files,
// tokenised by a SentencePiece unigram model trained on the training split and
// cached on disk.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/source.h"

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace s2h::data {

// A SentencePiece model with the special ids pad 0, unk 1, bos 2, eos 3.
// Encoding is const and safe to call from several threads at once.
class Tokenizer {
 public:
  static constexpr int32_t kPad = 0, kUnk = 1, kBos = 2, kEos = 3;

  // Trains a unigram model of about `vocab_size` pieces (a soft limit: a small
  // corpus gives fewer) on `sentences`, deterministically (one thread).
  static Tokenizer train(const std::vector<std::string>& sentences, int64_t vocab_size);
  // A model from its serialized bytes (the content of a .model file);
  // `origin` names where they came from in error messages.
  static Tokenizer from_bytes(const std::string& bytes, const std::string& origin);
  static Tokenizer load(const std::string& path);

  int64_t vocab_size() const;          // the model's piece count; every id is below it
  const std::string& bytes() const { return bytes_; }  // the serialized model
  std::vector<int32_t> pieces(std::string_view text) const;  // ids of `text`, no BOS/EOS

  // Fixed-length encodings into out[0, max_len): [BOS] text [EOS], or
  // [BOS] a [EOS] b [EOS] for a pair, padded with kPad. A single text is cut
  // at its end; for a pair, pieces are dropped from the end of the longer
  // text (the second on a tie) until it fits. The final EOS is always kept.
  void encode(std::string_view text, int64_t max_len, int32_t* out) const;
  void encode_pair(std::string_view a, std::string_view b, int64_t max_len, int32_t* out) const;

 private:
  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;
  std::string bytes_;
};

// One labelled example of a GLUE TSV file (`b` is empty for single-sentence tasks).
struct GlueExample {
  std::string a, b;
  int64_t label = 0;
};

// The tasks load_glue knows: "sst2", "rte", "cola".
std::vector<std::string> glue_tasks();

// Parses a labelled GLUE split (train.tsv or dev.tsv) strictly:
//   sst2: header "sentence<TAB>label", then sentence, label 0/1;
//   rte:  header "index<TAB>sentence1<TAB>sentence2<TAB>label", label
//         entailment -> 0, not_entailment -> 1 (GLUE's order);
//   cola: no header; source, label 0/1, original judgement, sentence.
// Fields are taken literally (quotes are text, as in GLUE). Throws naming the
// file (and line): missing, empty, a wrong header, a wrong column count, a bad label.
std::vector<GlueExample> read_glue_tsv(const std::string& task, const std::string& path);

struct TextOptions {
  int64_t max_len = 64;      // tokens per sample, BOS and EOS included
  int64_t vocab_size = 8000;  // requested SentencePiece vocabulary size
  // Where trained tokenizers are cached; empty: $S2H_CACHE_DIR, else
  // $XDG_CACHE_HOME/s2h, else $HOME/.cache/s2h.
  std::string cache_dir;
};

// The cache folder `opt` selects (not created).
std::string text_cache_dir(const TextOptions& opt);

struct GlueData {
  SourcePtr train, dev;  // samples: i64 ids [max_len]; labels 0/1
  int64_t vocab_size = 0;
  std::string tokenizer_path;     // the cached model file
  bool tokenizer_cached = false;  // true when the model was loaded from the cache, false when trained now
};

// Loads task ("sst2" | "rte" | "cola") from dir/train.tsv and dir/dev.tsv.
// The tokenizer is trained on the training split's sentences (both sentences
// for RTE) and cached as <cache>/<task>-v<vocab>-<hash>.model, where the hash
// (FNV-1a 64) covers the training file's bytes and the tokenizer options; a
// later call with the same file and options loads it instead of training.
// All sentences are encoded once here and kept in memory as int32.
GlueData load_glue(const std::string& task, const std::string& dir, const TextOptions& opt);

}  // namespace s2h::data
