// SVG charts and text tables for pruning reports (see report.h).
#include "pruning/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iterator>
#include <limits>

#include "engine/error.h"

namespace s2h::pruning {
namespace {

const char* const kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
const char* colour(size_t i) { return kPalette[i % std::size(kPalette)]; }
template <class... Args>
void put(std::string& out, fmt::format_string<Args...> format, Args&&... args) {
  fmt::format_to(std::back_inserter(out), format, std::forward<Args>(args)...);
}

constexpr double kCharW = 7.0;  // rough width of one character at the 11-12 px fonts used here

size_t code_points(const std::string& s) {
  return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
}

// At most n code points; longer text is cut and ends with "...".
std::string ellipsize(const std::string& s, size_t n) {
  if (code_points(s) <= n) return s;
  size_t kept = 0, i = 0;
  for (; i < s.size(); ++i)
    if ((s[i] & 0xC0) != 0x80 && kept++ == n - 3) break;
  return s.substr(0, i) + "...";
}

struct Range {
  double lo = INFINITY, hi = -INFINITY;
  void add(double v) {
    if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  }
};

struct Axis {
  double lo = 0, hi = 1;
  std::vector<double> ticks;
  std::vector<std::string> labels;
};

// About five ticks at 1, 2 or 5 times a power of ten, covering r; labels with
// the fewest %g digits (>= 6) that tell neighbouring ticks apart.
Axis nice_axis(Range r) {
  if (!(r.lo <= r.hi)) r = {0, 1};  // no finite data
  if (r.lo == r.hi) {
    const double pad = r.lo == 0 ? 1 : std::abs(r.lo) * 0.1, big = std::numeric_limits<double>::max();
    r.lo = std::max(r.lo - pad, -big), r.hi = std::min(r.hi + pad, big);
  }
  if (!(r.hi / 4 - r.lo / 4 > 0)) r = {r.lo - 1, r.lo + 1};  // a range that underflows (denormals)
  Axis a;
  const double raw = r.hi / 4 - r.lo / 4;  // halves first: no overflow near DBL_MAX
  const double mag = std::pow(10.0, std::floor(std::log10(raw))), n = raw / mag;
  const double step = (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
  const double lo = std::floor(r.lo / step) * step, hi = std::ceil(r.hi / step) * step;
  const double count = std::round(hi / step - lo / step);
  if (std::isfinite(lo) && std::isfinite(hi) && step > 0 && count >= 1 && count <= 20) {
    a.lo = lo, a.hi = hi;
    for (int i = 0; i <= static_cast<int>(count); ++i) {
      const double t = lo + i * step;
      a.ticks.push_back(std::abs(t) < step * 1e-6 ? 0.0 : t);
    }
  } else {  // degenerate (denormals, DBL_MAX): five evenly spaced ticks on the raw range
    a.lo = r.lo, a.hi = r.hi;
    for (double i = 0; i <= 4; ++i) a.ticks.push_back(r.lo * (1 - i / 4) + r.hi * (i / 4));
  }
  for (int digits = 6; digits <= 17; ++digits) {
    a.labels.clear();
    for (double t : a.ticks) a.labels.push_back(fmt::format("{:.{}g}", t, digits));
    if (std::adjacent_find(a.labels.begin(), a.labels.end()) == a.labels.end()) break;
  }
  return a;
}

// v in [lo, hi] -> [a, b]; halves first so that huge ranges do not overflow.
double lerp(double v, double lo, double hi, double a, double b) {
  return a + (v / 2 - lo / 2) / (hi / 2 - lo / 2) * (b - a);
}

struct Frame {
  double x0 = 0, x1 = 0, y0 = 0, y1 = 0, legend_w = 0;  // plot area; legend to its right
  Axis ya;
  double sy(double v) const { return lerp(v, ya.lo, ya.hi, y1, y0); }
};

// The y axis and the horizontal layout; the caller sets y1 (the bottom margin).
Frame make_frame(const char* what, const ChartOptions& opt, Range yr, const std::vector<std::string>& names) {
  S2H_CHECK(opt.width >= 240 && opt.height >= 160,
            "{}: the chart size {}x{} is too small (width >= 240, height >= 160)", what, opt.width, opt.height);
  if (opt.y_from_zero) yr.add(0);
  for (double h : opt.hlines) yr.add(h);
  Frame f;
  f.ya = nice_axis(yr);
  size_t label = 0, name = 0;
  for (const std::string& l : f.ya.labels) label = std::max(label, l.size());
  for (const std::string& n : names) name = std::max(name, code_points(n));
  f.x0 = std::min(opt.width / 3.0, 14 + kCharW * label + (opt.ylabel.empty() ? 0 : 22));
  f.legend_w = names.empty() ? 0 : std::min(opt.width / 4.0, 34 + kCharW * name);
  f.x1 = opt.width - 16 - f.legend_w;
  f.y0 = opt.title.empty() ? 16 : 40;
  return f;
}

void append_header(std::string& out, const ChartOptions& opt) {
  put(out,
      "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect x=\"0\" y=\"0\" width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n",
      opt.width, opt.height);
  if (!opt.title.empty())
    put(out, "<text x=\"{:.1f}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n", opt.width / 2.0,
        xml_escape(opt.title));
}

// Gridlines, y tick labels, axis labels, the plot box and the reference lines.
void append_axes(std::string& out, const Frame& f, const ChartOptions& opt, double xlabel_y) {
  for (size_t i = 0; i < f.ya.ticks.size(); ++i) {
    const double y = f.sy(f.ya.ticks[i]);
    put(out, "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#e0e0e0\"/>\n", f.x0, y, f.x1, y);
    put(out, "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\" font-size=\"11\">{}</text>\n", f.x0 - 5, y + 4,
        xml_escape(f.ya.labels[i]));
  }
  put(out, "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" stroke=\"#444\"/>\n", f.x0,
      f.y0, f.x1 - f.x0, f.y1 - f.y0);
  for (double h : opt.hlines)
    if (std::isfinite(h))
      put(out,
          "<line class=\"hline\" x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#333\" "
          "stroke-dasharray=\"6,4\"/>\n",
          f.x0, f.sy(h), f.x1, f.sy(h));
  const double ym = (f.y0 + f.y1) / 2;
  if (!opt.ylabel.empty())
    put(out, "<text x=\"16\" y=\"{0:.1f}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {0:.1f})\">{1}</text>\n",
        ym, xml_escape(opt.ylabel));
  if (!opt.xlabel.empty())
    put(out, "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", (f.x0 + f.x1) / 2, xlabel_y,
        xml_escape(opt.xlabel));
}

void append_legend(std::string& out, const Frame& f, const std::vector<std::string>& names, bool bars) {
  const size_t chars = static_cast<size_t>(std::max(4.0, (f.legend_w - 34) / kCharW));
  for (size_t i = 0; i < names.size(); ++i) {
    const double x = f.x1 + 14, y = f.y0 + 10 + 18 * static_cast<double>(i);
    if (bars)
      put(out, "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"14\" height=\"12\" fill=\"{}\"/>\n", x, y - 6, colour(i));
    else
      put(out, "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" stroke-width=\"2\"/>\n", x,
          y, x + 18, y, colour(i));
    put(out, "<text class=\"legend\" x=\"{:.1f}\" y=\"{:.1f}\">{}</text>\n", x + 24, y + 4,
        xml_escape(ellipsize(names[i], chars)));
  }
}

}  // namespace

std::string xml_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r') ? '?' : c;
    }
  }
  return out;
}

std::string svg_line_chart(const std::vector<Series>& series, const ChartOptions& opt) {
  Range xr, yr;
  std::vector<std::string> names;
  for (size_t i = 0; i < series.size(); ++i) {
    const Series& s = series[i];
    S2H_CHECK(s.x.size() == s.y.size(), "svg_line_chart: series '{}' (#{}) has {} x values but {} y values", s.name, i,
              s.x.size(), s.y.size());
    for (size_t k = 0; k < s.x.size(); ++k)
      if (std::isfinite(s.x[k]) && std::isfinite(s.y[k])) xr.add(s.x[k]), yr.add(s.y[k]);
    names.push_back(s.name);
  }
  Frame f = make_frame("svg_line_chart", opt, yr, names);
  f.y1 = opt.height - (opt.xlabel.empty() ? 28 : 46);
  const Axis xa = nice_axis(xr);
  auto sx = [&](double v) { return lerp(v, xa.lo, xa.hi, f.x0, f.x1); };
  std::string out;
  append_header(out, opt);
  for (size_t i = 0; i < xa.ticks.size(); ++i) {
    const double x = sx(xa.ticks[i]);
    put(out, "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" stroke=\"#e0e0e0\"/>\n", x, f.y0, f.y1);
    put(out, "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" font-size=\"11\">{}</text>\n", x, f.y1 + 15,
        xml_escape(xa.labels[i]));
  }
  append_axes(out, f, opt, opt.height - 10);
  for (size_t i = 0; i < series.size(); ++i) {
    const Series& s = series[i];
    std::string d, markers;
    size_t run = 0;  // points in the current unbroken piece
    for (size_t k = 0; k < s.x.size(); ++k) {
      if (!std::isfinite(s.x[k]) || !std::isfinite(s.y[k])) {
        if (run == 1) d += " h0";  // an isolated point: a dot (round caps)
        run = 0;
        continue;
      }
      const double x = sx(s.x[k]), y = f.sy(s.y[k]);
      put(d, "{}{}{:.1f} {:.1f}", d.empty() ? "" : " ", run++ == 0 ? "M" : "L", x, y);
      if (s.x.size() <= 60)
        put(markers, "<circle class=\"marker\" cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", x, y, colour(i));
    }
    if (run == 1) d += " h0";
    if (d.empty()) continue;
    put(out,
        "<path class=\"series\" d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" "
        "stroke-linecap=\"round\" stroke-linejoin=\"round\"><title>{}</title></path>\n{}",
        d, colour(i), xml_escape(s.name), markers);
  }
  append_legend(out, f, names, false);
  return out + "</svg>\n";
}

std::string svg_bar_chart(const std::vector<std::string>& categories, const std::vector<std::string>& series_names,
                          const std::vector<std::vector<double>>& values, const ChartOptions& opt) {
  S2H_CHECK(values.size() == series_names.size(), "svg_bar_chart: values has {} rows but there are {} series_names",
            values.size(), series_names.size());
  Range yr;
  yr.add(0);
  for (size_t s = 0; s < values.size(); ++s) {
    S2H_CHECK(values[s].size() == categories.size(),
              "svg_bar_chart: values[{}] (series '{}') has {} entries but there are {} categories", s, series_names[s],
              values[s].size(), categories.size());
    for (double v : values[s]) yr.add(v);
  }
  Frame f = make_frame("svg_bar_chart", opt, yr, series_names);
  const size_t ncat = categories.size(), nser = series_names.size();
  const double band = (f.x1 - f.x0) / static_cast<double>(std::max<size_t>(ncat, 1));
  size_t longest = 0;
  for (const std::string& c : categories) longest = std::max(longest, code_points(c));
  const bool rotate = kCharW * static_cast<double>(longest) > band * 0.95;
  const size_t chars = rotate ? 24 : longest;
  const double label_h =
      rotate ? std::min(opt.height / 3.0, 24 + 5.0 * static_cast<double>(std::min(longest, chars))) : 24;
  f.y1 = opt.height - label_h - (opt.xlabel.empty() ? 4 : 22);
  const size_t every = rotate ? static_cast<size_t>(std::max(1.0, std::ceil(16 / band))) : 1;  // thin out labels

  std::string out;
  append_header(out, opt);
  append_axes(out, f, opt, opt.height - 10);
  const double bar_w = band * 0.8 / static_cast<double>(std::max<size_t>(nser, 1)), base = f.sy(0);
  for (size_t c = 0; c < ncat; ++c) {
    const double left = f.x0 + band * static_cast<double>(c) + band * 0.1, mid = f.x0 + band * (c + 0.5);
    for (size_t s = 0; s < nser; ++s) {
      const double v = values[s][c];
      if (!std::isfinite(v)) continue;
      const double y = f.sy(v);
      put(out,
          "<rect class=\"bar\" x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\">"
          "<title>{}, {}: {:g}</title></rect>\n",
          left + bar_w * static_cast<double>(s), std::min(y, base), bar_w, std::abs(base - y), colour(s),
          xml_escape(series_names[s]), xml_escape(categories[c]), v);
    }
    if (c % every != 0) continue;
    const std::string label = xml_escape(ellipsize(categories[c], chars));
    if (rotate)
      put(out,
          "<text x=\"{0:.1f}\" y=\"{1:.1f}\" text-anchor=\"end\" font-size=\"11\" "
          "transform=\"rotate(-45 {0:.1f} {1:.1f})\">{2}</text>\n",
          mid, f.y1 + 12, label);
    else
      put(out, "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" font-size=\"11\">{}</text>\n", mid, f.y1 + 15,
          label);
  }
  put(out, "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#444\"/>\n", f.x0, base, f.x1, base);
  append_legend(out, f, series_names, true);
  return out + "</svg>\n";
}

namespace {

// A number, optionally followed by '%' or 'x' ("12.5%", "2.3x").
bool is_number(const std::string& s) {
  if (s.empty()) return false;
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  const size_t used = static_cast<size_t>(end - s.c_str());
  return used > 0 && (used == s.size() || (used + 1 == s.size() && (s.back() == '%' || s.back() == 'x')));
}

struct Grid {
  std::vector<std::vector<std::string>> rows;  // padded to the same width
  std::vector<size_t> width;
  std::vector<bool> numeric;  // right-aligned: every non-empty body cell is a number (and there is one)
};

Grid make_grid(std::vector<std::vector<std::string>> rows, size_t min_width) {
  Grid g;
  size_t cols = 0;
  for (const auto& r : rows) cols = std::max(cols, r.size());
  g.width.assign(cols, min_width);
  g.numeric.assign(cols, true);
  std::vector<bool> any(cols, false);
  for (size_t r = 0; r < rows.size(); ++r) {
    rows[r].resize(cols);
    for (size_t c = 0; c < cols; ++c) {
      g.width[c] = std::max(g.width[c], code_points(rows[r][c]));
      if (r == 0 || rows[r][c].empty()) continue;
      if (is_number(rows[r][c]))
        any[c] = true;
      else
        g.numeric[c] = false;
    }
  }
  for (size_t c = 0; c < cols; ++c) g.numeric[c] = g.numeric[c] && any[c];
  g.rows = std::move(rows);
  return g;
}

std::string pad(const std::string& s, size_t width, bool right) {
  const std::string fill(width - std::min(width, code_points(s)), ' ');
  return right ? fill + s : s + fill;
}

}  // namespace

std::string text_table(const std::vector<std::vector<std::string>>& rows) {
  const Grid g = make_grid(rows, 0);
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    std::string l;
    for (size_t c = 0; c < cells.size(); ++c) l += (c ? "  " : "") + pad(cells[c], g.width[c], g.numeric[c]);
    l.erase(l.find_last_not_of(' ') + 1);
    out += l + "\n";
  };
  for (size_t r = 0; r < g.rows.size(); ++r) {
    line(g.rows[r]);
    if (r == 0) {
      std::vector<std::string> dashes;
      for (size_t w : g.width) dashes.emplace_back(w, '-');
      line(dashes);
    }
  }
  return out;
}

std::string markdown_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::vector<std::string>> cells = rows;
  for (auto& r : cells)
    for (std::string& s : r) {
      std::string e;
      for (char ch : s) e += ch == '|' ? "\\|" : (ch == '\n' || ch == '\r') ? " " : std::string(1, ch);
      s = e;
    }
  const Grid g = make_grid(std::move(cells), 3);
  std::string out;
  for (size_t r = 0; r < g.rows.size(); ++r) {
    for (size_t c = 0; c < g.width.size(); ++c) out += "| " + pad(g.rows[r][c], g.width[c], g.numeric[c]) + " ";
    out += "|\n";
    if (r == 0) {
      for (size_t c = 0; c < g.width.size(); ++c)
        out += "| " + (g.numeric[c] ? std::string(g.width[c] - 1, '-') + ":" : std::string(g.width[c], '-')) + " ";
      out += "|\n";
    }
  }
  return out;
}

}  // namespace s2h::pruning
