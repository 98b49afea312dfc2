// GLUE TSV parsing, the cached SentencePiece tokenizer and the text sources.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <set>

#include "data/dataset.h"
#include "data/text.h"
#include "test_util.h"

namespace s2h::data {
namespace {

using test::TempDir;
using test::write_bytes;
namespace fs = std::filesystem;

constexpr int32_t kPad = Tokenizer::kPad, kBos = Tokenizer::kBos, kEos = Tokenizer::kEos;

// `n` varied lower-case sentences of 4 to 15 words, the same for a given seed.
std::vector<std::string> sentences(size_t n, uint64_t seed) {
  static const char* words[] = {"the",   "movie", "was",    "quite",  "good",   "bad",    "a",       "film",
                                "story", "plot",  "actors", "play",   "well",   "poorly", "boring",  "exciting",
                                "and",   "but",   "not",    "very",   "funny",  "sad",    "charming", "dull",
                                "with",  "great", "music",  "scenes", "ending", "long",   "short",   "director",
                                "of",    "its",   "every",  "moment", "is",     "simply", "lovely",  "awful"};
  Generator g(seed);
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) {
    std::string s;
    const uint64_t len = 4 + g.below(12);
    for (uint64_t w = 0; w < len; ++w) s += std::string(w ? " " : "") + words[g.below(std::size(words))];
    out.push_back(s);
  }
  return out;
}

// SST-2 files: header, then sentence<TAB>label with alternating labels.
std::string sst2_tsv(const std::vector<std::string>& s) {
  std::string t = "sentence\tlabel\n";
  for (size_t i = 0; i < s.size(); ++i) t += s[i] + " \t" + std::to_string(i % 2) + "\n";
  return t;
}

std::string rte_tsv(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::string t = "index\tsentence1\tsentence2\tlabel\n";
  for (size_t i = 0; i < a.size(); ++i)
    t += std::to_string(i) + "\t" + a[i] + "\t" + b[i] + "\t" + (i % 3 ? "entailment" : "not_entailment") + "\n";
  return t;
}

// A folder with train.tsv (200 sentences) and dev.tsv (20) of SST-2.
struct Sst2Dir {
  TempDir dir;
  std::vector<std::string> train = sentences(200, 1), dev = sentences(20, 2);
  Sst2Dir() {
    write_bytes(dir.file("train.tsv"), sst2_tsv(train));
    write_bytes(dir.file("dev.tsv"), sst2_tsv(dev));
  }
};

TextOptions small_options(const TempDir& cache, int64_t max_len = 24) {
  TextOptions o;
  o.max_len = max_len;
  o.vocab_size = 64;
  o.cache_dir = cache.str();
  return o;
}

std::vector<int64_t> read_ids(const Source& src, int64_t i) {
  std::vector<int64_t> ids(static_cast<size_t>(src.sample_spec().shape.at(0)), -1);
  Generator g(0);
  src.read(i, ids.data(), g);
  return ids;
}

std::vector<std::vector<int64_t>> all_ids(const Source& src) {
  std::vector<std::vector<int64_t>> out;
  for (int64_t i = 0; i < src.size(); ++i) out.push_back(read_ids(src, i));
  return out;
}

// ------------------------------------------------------------------ parsing
TEST(GlueTsv, ParsesTheThreeFormats) {
  TempDir d;
  // SST-2 with CRLF line ends and no final newline.
  write_bytes(d.file("sst2.tsv"), "sentence\tlabel\r\nit 's a charming journey . \t1\r\nunflinchingly bleak \t0");
  const auto sst = read_glue_tsv("sst2", d.file("sst2.tsv"));
  ASSERT_EQ(sst.size(), 2u);
  EXPECT_EQ(sst[0].a, "it 's a charming journey . ");
  EXPECT_EQ(sst[0].label, 1);
  EXPECT_EQ(sst[1].a, "unflinchingly bleak ");
  EXPECT_EQ(sst[1].label, 0);
  EXPECT_TRUE(sst[0].b.empty());

  // RTE: quotes are literal text, GLUE's label order (entailment 0).
  write_bytes(d.file("rte.tsv"),
              "index\tsentence1\tsentence2\tlabel\n0\t\"Quoted,\" he said.\tHe spoke.\tentailment\n"
              "1\tA cat.\tA dog.\tnot_entailment\n");
  const auto rte = read_glue_tsv("rte", d.file("rte.tsv"));
  ASSERT_EQ(rte.size(), 2u);
  EXPECT_EQ(rte[0].a, "\"Quoted,\" he said.");
  EXPECT_EQ(rte[0].b, "He spoke.");
  EXPECT_EQ(rte[0].label, 0);
  EXPECT_EQ(rte[1].label, 1);

  // CoLA: no header; label in column 2, sentence in column 4.
  write_bytes(d.file("cola.tsv"), "gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tThe more books I ask to.\n");
  const auto cola = read_glue_tsv("cola", d.file("cola.tsv"));
  ASSERT_EQ(cola.size(), 2u);
  EXPECT_EQ(cola[0].a, "The sailors rode the breeze.");
  EXPECT_EQ(cola[0].label, 1);
  EXPECT_EQ(cola[1].a, "The more books I ask to.");
  EXPECT_EQ(cola[1].label, 0);

  EXPECT_EQ(glue_tasks(), (std::vector<std::string>{"sst2", "rte", "cola"}));
}

TEST(GlueTsv, BadFilesAreNamed) {
  TempDir d;
  const std::string f = d.file("bad.tsv");
  write_bytes(f, "sentence\tlabel\ngood one\t1\nno label here\n");
  test::expect_error([&] { read_glue_tsv("sst2", f); }, {f + ":3:", "expected 2 tab-separated columns, found 1"},
                     "missing column");
  write_bytes(f, "sentence\tlabel\ngood one\t1\ntoo\tmany\t1\n");
  test::expect_error([&] { read_glue_tsv("sst2", f); }, {f + ":3:", "found 3"}, "extra column");
  write_bytes(f, "gj04\t1\t\tfine.\ngj04\t2\t*\tbad label.\n");
  test::expect_error([&] { read_glue_tsv("cola", f); }, {f + ":2:", "bad label", "\"2\""}, "bad CoLA label");
  write_bytes(f, "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tneutral\n");
  test::expect_error([&] { read_glue_tsv("rte", f); }, {f + ":2:", "bad label", "neutral"}, "bad RTE label");
  write_bytes(f, "sentence\tlabel\nfine\t\n");
  test::expect_error([&] { read_glue_tsv("sst2", f); }, {f + ":2:", "bad label", "\"\""}, "empty label");
  write_bytes(f, "text\tlabel\nfine\t1\n");
  test::expect_error([&] { read_glue_tsv("sst2", f); }, {f + ":1:", "header"}, "wrong header");
  write_bytes(f, "sentence\tlabel\n");
  test::expect_error([&] { read_glue_tsv("sst2", f); }, {f, "no examples"}, "header only");
  write_bytes(f, "");
  test::expect_error([&] { read_glue_tsv("sst2", f); }, {f, "empty"}, "empty file");
  test::expect_error([&] { read_glue_tsv("sst2", d.file("missing.tsv")); }, {d.file("missing.tsv"), "cannot open"},
                     "missing file");
  test::expect_error([&] { read_glue_tsv("mnli", f); }, {"unknown GLUE task", "mnli", "sst2"}, "unknown task");

  // load_glue names the missing split.
  TempDir cache;
  write_bytes(d.file("train.tsv"), sst2_tsv(sentences(50, 1)));
  test::expect_error([&] { load_glue("sst2", d.str(), small_options(cache)); }, {d.file("dev.tsv"), "cannot open"},
                     "missing dev.tsv");
}

// ------------------------------------------------------------------ tokenizer and ids
TEST(GlueText, Sst2IdsMatchTheTokenizer) {
  Sst2Dir data;
  TempDir cache;
  const TextOptions opt = small_options(cache);
  const GlueData g = load_glue("sst2", data.dir.str(), opt);
  EXPECT_FALSE(g.tokenizer_cached);
  EXPECT_TRUE(fs::is_regular_file(g.tokenizer_path));
  EXPECT_EQ(fs::path(g.tokenizer_path).parent_path(), cache.path());
  EXPECT_EQ(fs::path(g.tokenizer_path).filename().string().rfind("sst2-v64-", 0), 0u) << g.tokenizer_path;
  EXPECT_GT(g.vocab_size, 30);
  EXPECT_LE(g.vocab_size, 64);

  ASSERT_EQ(g.train->size(), 200);
  ASSERT_EQ(g.dev->size(), 20);
  EXPECT_EQ(g.train->name(), "sst2/train");
  EXPECT_EQ(g.train->num_classes(), 2);
  EXPECT_EQ(g.dev->num_classes(), 2);
  EXPECT_EQ(g.train->vocab_size(), g.vocab_size);
  EXPECT_EQ(g.train->sample_spec().dtype, DType::I64);
  EXPECT_EQ(g.train->sample_spec().shape, (Shape{opt.max_len}));
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(g.train->label(i), i % 2);

  const Tokenizer tok = Tokenizer::load(g.tokenizer_path);
  EXPECT_EQ(tok.vocab_size(), g.vocab_size);
  for (const auto& [src, text] : {std::pair{g.train, &data.train}, std::pair{g.dev, &data.dev}}) {
    for (int64_t i = 0; i < src->size(); ++i) {
      const std::vector<int32_t> p = tok.pieces((*text)[static_cast<size_t>(i)]);
      const std::vector<int64_t> ids = read_ids(*src, i);
      const size_t n = std::min(p.size(), static_cast<size_t>(opt.max_len - 2));
      ASSERT_EQ(ids[0], kBos) << src->name() << " " << i;
      for (size_t k = 0; k < n; ++k) {
        EXPECT_EQ(ids[1 + k], p[k]);
        EXPECT_GT(ids[1 + k], kEos);  // only ordinary pieces (no unknowns in this corpus) inside
      }
      ASSERT_EQ(ids[1 + n], kEos) << src->name() << " " << i;
      for (size_t k = n + 2; k < ids.size(); ++k) ASSERT_EQ(ids[k], kPad);
    }
  }
  test::expect_error([&] { read_ids(*g.dev, 20); }, {"sst2/dev", "out of range"}, "index past the end");

  // The loader batches them as i64 [B, max_len].
  Loader loader(g.train, LoaderOptions{.batch_size = 16, .shuffle = true, .seed = 3});
  const Batch b = loader.batch(0);
  EXPECT_EQ(b.inputs.shape(), (Shape{16, opt.max_len}));
  EXPECT_EQ(b.inputs.dtype(), DType::I64);
  EXPECT_EQ(b.inputs.data<int64_t>()[0], kBos);
}

TEST(GlueText, TruncationKeepsTheFinalEos) {
  Sst2Dir data;
  TempDir cache;
  const GlueData g = load_glue("sst2", data.dir.str(), small_options(cache, 6));
  const Tokenizer tok = Tokenizer::load(g.tokenizer_path);
  int64_t cut = 0;
  for (int64_t i = 0; i < g.train->size(); ++i) {
    const std::vector<int32_t> p = tok.pieces(data.train[static_cast<size_t>(i)]);
    const std::vector<int64_t> ids = read_ids(*g.train, i);
    if (p.size() < 4) continue;
    ++cut;
    EXPECT_EQ(ids, (std::vector<int64_t>{kBos, p[0], p[1], p[2], p[3], kEos}));
  }
  EXPECT_GT(cut, 100);  // most sentences are longer than 4 pieces
}

TEST(GlueText, PairsAreCutLongestFirst) {
  Sst2Dir data;
  TempDir cache;
  const Tokenizer tok = Tokenizer::load(load_glue("sst2", data.dir.str(), small_options(cache)).tokenizer_path);
  const std::string long_text = "the movie was quite good and the story was charming with great music and scenes";
  const std::string short_text = "a dull film";
  const std::vector<int32_t> pl = tok.pieces(long_text), ps = tok.pieces(short_text);
  ASSERT_GT(pl.size(), ps.size() + 6);

  // Room for everything: BOS a EOS b EOS then padding.
  const int64_t roomy = static_cast<int64_t>(pl.size() + ps.size()) + 5;
  std::vector<int32_t> out(static_cast<size_t>(roomy));
  tok.encode_pair(short_text, long_text, roomy, out.data());
  std::vector<int32_t> want{kBos};
  want.insert(want.end(), ps.begin(), ps.end());
  want.push_back(kEos);
  want.insert(want.end(), pl.begin(), pl.end());
  want.insert(want.end(), {kEos, kPad, kPad});
  EXPECT_EQ(out, want);

  // Too long: only the longer text loses pieces, from its end.
  const int64_t tight = static_cast<int64_t>(ps.size()) * 2 + 3 + 1;
  out.assign(static_cast<size_t>(tight), -1);
  tok.encode_pair(long_text, short_text, tight, out.data());
  want = {kBos};
  want.insert(want.end(), pl.begin(), pl.begin() + static_cast<int64_t>(ps.size()) + 1);
  want.push_back(kEos);
  want.insert(want.end(), ps.begin(), ps.end());
  want.push_back(kEos);
  EXPECT_EQ(out, want);

  // Both long: they end up sharing the room, the first keeping the odd piece.
  out.assign(10, -1);
  tok.encode_pair(long_text, long_text, 10, out.data());  // 7 pieces of room: 4 + 3
  EXPECT_EQ(out, (std::vector<int32_t>{kBos, pl[0], pl[1], pl[2], pl[3], kEos, pl[0], pl[1], pl[2], kEos}));
}

TEST(GlueText, RtePairsLoad) {
  TempDir d, cache;
  const auto a = sentences(120, 5), b = sentences(120, 6);
  write_bytes(d.file("train.tsv"), rte_tsv(a, b));
  write_bytes(d.file("dev.tsv"), rte_tsv(sentences(9, 7), sentences(9, 8)));
  const GlueData g = load_glue("rte", d.str(), small_options(cache, 80));
  ASSERT_EQ(g.train->size(), 120);
  ASSERT_EQ(g.dev->size(), 9);
  EXPECT_EQ(g.train->label(0), 1);  // not_entailment
  EXPECT_EQ(g.train->label(1), 0);
  const Tokenizer tok = Tokenizer::load(g.tokenizer_path);
  for (int64_t i = 0; i < 5; ++i) {
    const auto pa = tok.pieces(a[static_cast<size_t>(i)]), pb = tok.pieces(b[static_cast<size_t>(i)]);
    std::vector<int64_t> want{kBos};
    want.insert(want.end(), pa.begin(), pa.end());
    want.push_back(kEos);
    want.insert(want.end(), pb.begin(), pb.end());
    want.push_back(kEos);
    want.resize(80, kPad);
    EXPECT_EQ(read_ids(*g.train, i), want);
  }
}

// ------------------------------------------------------------------ caching and determinism
TEST(GlueText, TheTokenizerIsCached) {
  Sst2Dir data;
  TempDir cache;
  const TextOptions opt = small_options(cache);
  const GlueData first = load_glue("sst2", data.dir.str(), opt);
  const GlueData second = load_glue("sst2", data.dir.str(), opt);
  EXPECT_FALSE(first.tokenizer_cached);
  EXPECT_TRUE(second.tokenizer_cached);
  EXPECT_EQ(second.tokenizer_path, first.tokenizer_path);
  EXPECT_EQ(second.vocab_size, first.vocab_size);
  EXPECT_EQ(all_ids(*second.train), all_ids(*first.train));
  EXPECT_EQ(all_ids(*second.dev), all_ids(*first.dev));
  EXPECT_EQ(cache.entries().size(), 1u);  // no temporary file left behind

  // Another vocabulary size, or a changed training file: another cache entry.
  TextOptions other = opt;
  other.vocab_size = 48;
  const GlueData v48 = load_glue("sst2", data.dir.str(), other);
  EXPECT_FALSE(v48.tokenizer_cached);
  EXPECT_NE(v48.tokenizer_path, first.tokenizer_path);
  auto changed = data.train;
  changed[7] += " again";
  write_bytes(data.dir.file("train.tsv"), sst2_tsv(changed));
  const GlueData edited = load_glue("sst2", data.dir.str(), opt);
  EXPECT_FALSE(edited.tokenizer_cached);
  EXPECT_NE(edited.tokenizer_path, first.tokenizer_path);
  EXPECT_EQ(cache.entries().size(), 3u);
  // max_len is not part of the tokenizer: the same entry serves another length.
  write_bytes(data.dir.file("train.tsv"), sst2_tsv(data.train));
  EXPECT_TRUE(load_glue("sst2", data.dir.str(), small_options(cache, 8)).tokenizer_cached);

  // A damaged cache entry is retrained and rewritten.
  write_bytes(first.tokenizer_path, "not a model");
  const GlueData repaired = load_glue("sst2", data.dir.str(), opt);
  EXPECT_FALSE(repaired.tokenizer_cached);
  EXPECT_EQ(all_ids(*repaired.train), all_ids(*first.train));
  EXPECT_TRUE(load_glue("sst2", data.dir.str(), opt).tokenizer_cached);
}

TEST(GlueText, TrainingIsDeterministic) {
  Sst2Dir data;
  TempDir cache1, cache2;
  const GlueData a = load_glue("sst2", data.dir.str(), small_options(cache1));
  const GlueData b = load_glue("sst2", data.dir.str(), small_options(cache2));
  EXPECT_FALSE(b.tokenizer_cached);
  EXPECT_EQ(test::read_bytes(a.tokenizer_path), test::read_bytes(b.tokenizer_path));
  EXPECT_EQ(all_ids(*a.train), all_ids(*b.train));
  EXPECT_EQ(all_ids(*a.dev), all_ids(*b.dev));
}

TEST(GlueText, CacheFolder) {
  Sst2Dir data;
  TempDir cache;
  // Created when missing, however deep.
  TextOptions opt = small_options(cache);
  opt.cache_dir = cache.file("a/b/c");
  EXPECT_FALSE(load_glue("sst2", data.dir.str(), opt).tokenizer_cached);
  EXPECT_TRUE(fs::is_directory(opt.cache_dir));

  // A file in the way of the folder.
  write_bytes(cache.file("file"), "x");
  opt.cache_dir = cache.file("file/sub");
  test::expect_error([&] { load_glue("sst2", data.dir.str(), opt); }, {"tokenizer cache folder", opt.cache_dir},
                     "cache folder under a file");

  // Not writable (root writes anywhere, so only checked for other users).
  if (::geteuid() != 0) {
    const std::string ro = cache.file("ro");
    fs::create_directory(ro);
    ::chmod(ro.c_str(), 0555);
    opt.cache_dir = ro;
    test::expect_error([&] { load_glue("sst2", data.dir.str(), opt); }, {"not writable", ro}, "read-only cache");
    ::chmod(ro.c_str(), 0755);
  }

  // The environment picks the folder when the option is empty.
  const char* saved = std::getenv("S2H_CACHE_DIR");
  const std::string saved_value = saved ? saved : "";
  ::setenv("S2H_CACHE_DIR", cache.file("env").c_str(), 1);
  EXPECT_EQ(text_cache_dir(TextOptions{}), cache.file("env"));
  if (saved)
    ::setenv("S2H_CACHE_DIR", saved_value.c_str(), 1);
  else
    ::unsetenv("S2H_CACHE_DIR");
  EXPECT_EQ(text_cache_dir(opt), opt.cache_dir);
}

TEST(GlueText, BadOptions) {
  Sst2Dir data;
  TempDir cache;
  test::expect_error([&] { load_glue("sst2", data.dir.str(), small_options(cache, 2)); }, {"max_len 2"}, "max_len");
  TextOptions opt = small_options(cache);
  opt.vocab_size = 3;
  test::expect_error([&] { load_glue("sst2", data.dir.str(), opt); }, {"vocabulary size 3"}, "vocab size");
  // Fewer pieces than the corpus has characters: SentencePiece refuses, the message names the file.
  opt.vocab_size = 8;
  test::expect_error([&] { load_glue("sst2", data.dir.str(), opt); }, {data.dir.file("train.tsv"), "SentencePiece"},
                     "vocab size below the alphabet");
}

// ------------------------------------------------------------------ the real SST-2
TEST(GlueText, RealSst2) {
  const char* root = std::getenv("S2H_GLUE_DIR");
  const fs::path dir = fs::path(root && *root ? root : "/work/shared/data/glue") / "SST-2";
  if (!fs::is_regular_file(dir / "train.tsv") || !fs::is_regular_file(dir / "dev.tsv"))
    GTEST_SKIP() << "no GLUE SST-2 at " << dir << " (set S2H_GLUE_DIR)";
  TempDir cache;
  TextOptions opt;
  opt.cache_dir = cache.str();
  const auto t0 = std::chrono::steady_clock::now();
  const GlueData g = load_glue("sst2", dir.string(), opt);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("SST-2: tokenizer trained and both splits encoded in %.1f s\n", secs);
  EXPECT_FALSE(g.tokenizer_cached);
  EXPECT_EQ(g.vocab_size, 8000);
  ASSERT_EQ(g.train->size(), 67349);
  ASSERT_EQ(g.dev->size(), 872);
  for (const SourcePtr& src : {g.train, g.dev}) {
    std::set<int64_t> labels;
    for (int64_t i = 0; i < src->size(); ++i) labels.insert(src->label(i));
    EXPECT_EQ(labels, (std::set<int64_t>{0, 1})) << src->name();
  }
  // Every sample starts with BOS and holds one EOS; ids are within the vocabulary.
  for (int64_t i = 0; i < g.train->size(); i += 97) {
    const std::vector<int64_t> ids = read_ids(*g.train, i);
    EXPECT_EQ(ids[0], kBos);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), kEos), 1);
    for (int64_t id : ids) EXPECT_TRUE(id >= 0 && id < g.vocab_size);
  }
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_TRUE(load_glue("sst2", dir.string(), opt).tokenizer_cached);
  std::printf("SST-2: loaded again from the cache in %.1f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
}

}  // namespace
}  // namespace s2h::data
