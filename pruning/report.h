// Charts and tables for the reports of `s2h prune`: standalone SVG 1.1
// documents (line and grouped-bar charts) and aligned text / GitHub markdown
// tables. No dependency beyond fmt; the output is deterministic (same input,
// same bytes), all text is XML-escaped, and NaN / infinite values are skipped.
#pragma once

#include <string>
#include <vector>

namespace s2h::pruning {

struct Series {
  std::string name;
  std::vector<double> x, y;  // same length; a NaN/inf in either breaks the line there
};

struct ChartOptions {
  std::string title, xlabel, ylabel;
  int width = 720, height = 400;  // pixels, at least 240 x 160
  bool y_from_zero = false;       // include 0 in the y range (bar charts always do)
  std::vector<double> hlines;     // dashed horizontal reference lines (e.g. the FLOPs target)
};

// Line chart of one or more series: legend on the right, axes with about five
// "nice" ticks (%g-style labels), gridlines, distinct colours, point markers
// when a series has <= 60 points. Each series with at least one finite point
// is one <path class="series">; empty or all-NaN series only appear in the
// legend. Returns the SVG document text.
std::string svg_line_chart(const std::vector<Series>& series, const ChartOptions& opt);

// Grouped bar chart: one group per category (e.g. per layer: "full" and
// "kept" channels); values[s][c] is series s at category c. Bars start at 0
// (negative values go down); NaN values draw no bar. Each bar is one
// <rect class="bar"> with a <title> tooltip. Category labels are rotated when
// they do not fit, and thinned out when there are too many.
std::string svg_bar_chart(const std::vector<std::string>& categories, const std::vector<std::string>& series_names,
                          const std::vector<std::vector<double>>& values, const ChartOptions& opt);

// Aligned plain-text table (first row = header, underlined with dashes; two
// spaces between columns; numeric columns right-aligned). Short rows are padded
// with empty cells. Ends with a newline; "" for no rows.
std::string text_table(const std::vector<std::vector<std::string>>& rows);
// The same as a GitHub markdown table ('|' escaped, newlines become spaces).
std::string markdown_table(const std::vector<std::vector<std::string>>& rows);

// &, <, >, " and ' as entities; control characters that XML 1.0 forbids become '?'.
std::string xml_escape(const std::string& text);

}  // namespace s2h::pruning
