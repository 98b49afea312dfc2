// SVG charts and tables of the pruning reports: document structure, escaping,
// NaN and degenerate ranges, argument checks, table alignment, and
// well-formedness (a small checker here, and Python's xml.etree when present).
#include <cmath>
#include <cstdlib>
#include <limits>

#include "pruning/report.h"
#include "tests/test_util.h"

namespace s2h::test {
namespace {

using pruning::ChartOptions;
using pruning::Series;
const double kNaN = std::numeric_limits<double>::quiet_NaN();

size_t count(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + needle.size())) ++n;
  return n;
}

// "" when the document is well-formed as far as these charts need: one root,
// balanced tags, quoted attributes, only the five predefined entities.
std::string xml_problem(const std::string& s) {
  std::vector<std::string> open;
  int roots = 0;
  size_t i = s.rfind("<?xml", 0) == 0 ? s.find("?>") + 2 : 0;
  while (i < s.size()) {
    if (s[i] == '<') {
      const size_t end = s.find('>', i);
      if (end == std::string::npos) return "unclosed '<'";
      const std::string tag = s.substr(i + 1, end - i - 1);
      if (tag.find('<') != std::string::npos || count(tag, "\"") % 2 != 0) return "bad tag <" + tag + ">";
      if (tag[0] == '/') {
        if (open.empty() || open.back() != tag.substr(1)) return "unmatched <" + tag + ">";
        open.pop_back();
      } else {
        roots += open.empty();
        if (tag.back() != '/') open.push_back(tag.substr(0, tag.find_first_of(" /")));
      }
      i = end + 1;
    } else if (s[i] == '&') {
      const std::string ent = s.substr(i, s.find(';', i) - i + 1);
      if (ent != "&amp;" && ent != "&lt;" && ent != "&gt;" && ent != "&quot;" && ent != "&apos;")
        return "entity " + ent;
      i += ent.size();
    } else {
      if (s[i] == '>' || (open.empty() && !std::isspace(static_cast<unsigned char>(s[i])))) return "stray text";
      ++i;
    }
  }
  if (!open.empty()) return "unclosed <" + open.back() + ">";
  return roots == 1 ? "" : fmt::format("{} root elements", roots);
}

void expect_clean_svg(const std::string& svg, const std::string& what) {
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u) << what;
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos) << what;
  EXPECT_NE(svg.find("viewBox=\"0 0 "), std::string::npos) << what;
  EXPECT_EQ(xml_problem(svg), "") << what;
  std::string lower = svg;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  EXPECT_EQ(lower.find("nan"), std::string::npos) << what << ": 'nan' in\n" << svg;
  EXPECT_EQ(lower.find("inf"), std::string::npos) << what << ": 'inf' in\n" << svg;
}

ChartOptions options(std::string title, std::string xlabel = "", std::string ylabel = "",
                     std::vector<double> hlines = {}) {
  ChartOptions o;
  o.title = std::move(title), o.xlabel = std::move(xlabel), o.ylabel = std::move(ylabel), o.hlines = std::move(hlines);
  return o;
}

std::string one_line(const std::vector<double>& x, const std::vector<double>& y, ChartOptions opt = {}) {
  return pruning::svg_line_chart({{"s", x, y}}, opt);
}

// Several charts that cover the awkward cases, for the well-formedness checks.
std::vector<std::string> sample_charts() {
  const ChartOptions opt = options("Tom & \"Jerry\" <3 'x'", "step <k>", "FLOPs & params", {0.5});
  return {
      pruning::svg_line_chart({{"a<b", {0, 1, 2, 3}, {0.1, 0.7, kNaN, 0.4}}, {"empty", {}, {}}}, opt),
      one_line({1e-300, 2e-300}, {-1e300, 1e300}),
      pruning::svg_bar_chart({"conv1", "layer1.0 & co", "fc"}, {"full", "kept"}, {{64, 128, 10}, {32, kNaN, -5}}, opt)};
}

TEST(PruningReport, LineChartStructureLegendAndEscaping) {
  const ChartOptions opt = options("Acc <top-1> & \"loss\"", "epoch", "acc");
  const std::string svg = pruning::svg_line_chart(
      {{"soft", {0, 1, 2}, {0.1, 0.5, 0.9}}, {"hard & narrow", {0, 1, 2}, {0.2, 0.4, 0.8}}, {"no data", {}, {}}}, opt);
  expect_clean_svg(svg, "line chart");
  EXPECT_EQ(count(svg, "<path"), 2u) << "one path per non-empty series";
  EXPECT_EQ(count(svg, "class=\"marker\""), 6u);
  EXPECT_NE(svg.find(">Acc &lt;top-1&gt; &amp; &quot;loss&quot;</text>"), std::string::npos);
  EXPECT_EQ(svg.find("<top-1>"), std::string::npos);
  for (const char* name :
       {">soft</text>", ">hard &amp; narrow</text>", ">no data</text>", ">epoch</text>", ">acc</text>"})
    EXPECT_NE(svg.find(name), std::string::npos) << name;
  EXPECT_NE(svg.find("stroke=\"#1f77b4\""), std::string::npos);
  EXPECT_NE(svg.find("stroke=\"#ff7f0e\""), std::string::npos) << "distinct colours";
  EXPECT_EQ(svg, pruning::svg_line_chart({{"soft", {0, 1, 2}, {0.1, 0.5, 0.9}},
                                          {"hard & narrow", {0, 1, 2}, {0.2, 0.4, 0.8}},
                                          {"no data", {}, {}}},
                                         opt))
      << "deterministic";
}

TEST(PruningReport, LineChartNiceTicksAndReferenceLines) {
  ChartOptions opt;
  opt.hlines = {13, kNaN};
  const std::string svg = one_line({0, 5, 10}, {0, 3, 10}, opt);
  // x: 0, 2, ..., 10 (step 2); y: 0, 5, 10, 15 (step 5, widened by the reference line at 13).
  for (const char* label : {">0</text>", ">4</text>", ">8</text>", ">10</text>", ">15</text>"})
    EXPECT_NE(svg.find(label), std::string::npos) << label;
  EXPECT_EQ(count(svg, "class=\"hline\""), 1u) << "NaN reference lines are skipped";
  EXPECT_NE(svg.find("stroke-dasharray"), std::string::npos);
  opt.hlines.clear();
  opt.y_from_zero = true;
  EXPECT_NE(one_line({0, 1}, {50, 60}, opt).find(">0</text>"), std::string::npos) << "y_from_zero";
}

TEST(PruningReport, NaNBreaksTheLine) {
  const std::string svg = one_line({0, 1, 2, 3, 4, 5, 6}, {1, 2, kNaN, 3, 4, kNaN, 5});
  expect_clean_svg(svg, "NaN series");
  const size_t at = svg.find("<path");
  ASSERT_NE(at, std::string::npos);
  const std::string path = svg.substr(at, svg.find('>', at) - at);
  EXPECT_EQ(count(path, "M"), 3u) << path;
  EXPECT_EQ(count(path, "L"), 2u) << path;
  EXPECT_EQ(count(path, "h0"), 1u) << "the isolated last point is a dot: " << path;
  EXPECT_EQ(count(svg, "class=\"marker\""), 5u);
  const std::string none = one_line({0, 1}, {kNaN, kNaN});
  expect_clean_svg(none, "all-NaN series");
  EXPECT_EQ(count(none, "<path"), 0u);
  std::vector<double> x(61), y(61);
  for (int i = 0; i < 61; ++i) x[i] = i, y[i] = std::sin(i);
  EXPECT_EQ(count(one_line(x, y), "class=\"marker\""), 0u) << "no markers above 60 points";
}

TEST(PruningReport, DegenerateRangesStayFinite) {
  const double big = std::numeric_limits<double>::max(), denorm = std::numeric_limits<double>::denorm_min();
  const std::vector<std::pair<std::vector<double>, std::vector<double>>> cases = {
      {{3}, {7}},                          // a single point
      {{0, 1, 2}, {5, 5, 5}},              // constant
      {{0, 1}, {0, 0}},                    // constant zero
      {{-3, -1}, {-20, -10}},              // negative
      {{0, 1e12}, {1e300, 3e300}},         // huge
      {{1e-300, 3e-300}, {2e-12, 5e-12}},  // tiny
      {{-big, big}, {big, big}},           // the whole double range, constant at the top
      {{0, 1}, {denorm, 2 * denorm}},      // a range that underflows
      {{1e9, 1e9 + 1}, {1, 2}},            // labels need more than 6 digits
  };
  for (size_t i = 0; i < cases.size(); ++i)
    expect_clean_svg(one_line(cases[i].first, cases[i].second), fmt::format("case {}", i));
  expect_clean_svg(pruning::svg_line_chart({}, {}), "no series");
  const std::string huge = one_line({0, 1}, {1e300, 3e300});
  EXPECT_NE(huge.find("e+300</text>"), std::string::npos) << huge;
  const std::string digits = one_line({1e9, 1e9 + 1}, {1, 2});
  EXPECT_NE(digits.find(">1000000000.2</text>"), std::string::npos) << "tick labels tell neighbours apart";
  EXPECT_NE(one_line({0, 1}, {-5, -1}).find(">-5</text>"), std::string::npos);
}

TEST(PruningReport, BarChart) {
  const ChartOptions opt = options("channels per layer");
  const std::string svg =
      pruning::svg_bar_chart({"conv1", "conv2", "fc"}, {"full", "kept"}, {{64, 128, 10}, {32, 64, 10}}, opt);
  expect_clean_svg(svg, "bar chart");
  EXPECT_EQ(count(svg, "class=\"bar\""), 6u);
  EXPECT_EQ(svg.find("rotate(-45"), std::string::npos) << "short labels stay horizontal";
  for (const char* s : {">conv1</text>", ">fc</text>", ">full</text>", ">kept</text>"})
    EXPECT_NE(svg.find(s), std::string::npos) << s;
  const std::string nan = pruning::svg_bar_chart({"a", "b"}, {"x", "y"}, {{1, kNaN}, {-2, 0}}, opt);
  expect_clean_svg(nan, "bar chart with NaN and negatives");
  EXPECT_EQ(count(nan, "class=\"bar\""), 3u);
  std::vector<std::string> cats;
  std::vector<double> full, kept;
  for (int i = 0; i < 120; ++i) {
    cats.push_back(fmt::format("layer{}.conv{}", i / 2, i % 2 + 1));
    full.push_back(64), kept.push_back(i % 64);
  }
  const std::string many = pruning::svg_bar_chart(cats, {"full", "kept"}, {full, kept}, opt);
  expect_clean_svg(many, "120 categories");
  EXPECT_EQ(count(many, "class=\"bar\""), 240u);
  EXPECT_NE(many.find("rotate(-45"), std::string::npos) << "many labels are rotated";
  EXPECT_LT(count(many, "rotate(-45"), 120u) << "and thinned out";
  expect_clean_svg(pruning::svg_bar_chart({}, {}, {}, opt), "empty bar chart");
}

TEST(PruningReport, ArgumentChecks) {
  EXPECT_ERROR("series 'b'|#1|3 x values|2 y values",
               pruning::svg_line_chart({{"a", {1}, {1}}, {"b", {1, 2, 3}, {1, 2}}}, {}));
  EXPECT_ERROR("values|3 rows|2 series_names", pruning::svg_bar_chart({"c"}, {"a", "b"}, {{1}, {2}, {3}}, {}));
  EXPECT_ERROR("values[1]|'kept'|1 entries|2 categories",
               pruning::svg_bar_chart({"c1", "c2"}, {"full", "kept"}, {{1, 2}, {1}}, {}));
  ChartOptions tiny;
  tiny.width = 100;
  EXPECT_ERROR("too small|100x400", one_line({1}, {1}, tiny));
}

TEST(PruningReport, TextAndMarkdownTables) {
  const std::vector<std::vector<std::string>> rows = {
      {"layer", "full", "kept", "ratio"}, {"conv1", "64", "32", "50%"}, {"layer1.0.conv2", "128", "8"}};
  EXPECT_EQ(pruning::text_table(rows),
            "layer           full  kept  ratio\n"
            "--------------  ----  ----  -----\n"
            "conv1             64    32    50%\n"
            "layer1.0.conv2   128     8\n");
  EXPECT_EQ(pruning::markdown_table({{"name", "n"}, {"a|b", "1"}, {"x\ny", "22"}}),
            "| name |   n |\n"
            "| ---- | --: |\n"
            "| a\\|b |   1 |\n"
            "| x y  |  22 |\n");
  EXPECT_EQ(pruning::text_table({}), "");
  EXPECT_EQ(pruning::markdown_table({}), "");
  // UTF-8 text is aligned by characters, not bytes.
  EXPECT_EQ(pruning::text_table({{"μ", "b"}, {"xy", "z"}}), "μ   b\n--  -\nxy  z\n");
}

TEST(PruningReport, WellFormedForPythonXml) {
  if (std::system("python3 -c 'import xml.etree.ElementTree' > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 with xml.etree not available: the C++ well-formedness check above still ran";
  TempDir dir;
  write_bytes(dir.file("check.py"),
              "import sys, xml.etree.ElementTree as ET\n"
              "for f in sys.argv[1:]:\n"
              "    root = ET.parse(f).getroot()\n"
              "    assert root.tag == '{http://www.w3.org/2000/svg}svg', (f, root.tag)\n"
              "    assert root.get('viewBox'), f\n");
  std::string args;
  const std::vector<std::string> charts = sample_charts();
  for (size_t i = 0; i < charts.size(); ++i) {
    EXPECT_EQ(xml_problem(charts[i]), "") << "chart " << i;
    write_bytes(dir.file(fmt::format("c{}.svg", i)), charts[i]);
    args += " '" + dir.file(fmt::format("c{}.svg", i)) + "'";
  }
  const std::string cmd = "python3 '" + dir.file("check.py") + "'" + args;
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

}  // namespace
}  // namespace s2h::test
