#include "apps/s2h/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fmt/format.h>

namespace s2h::app {

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  if (s >= 3600) return fmt::format("{}:{:02d}:{:02d}", s / 3600, (s / 60) % 60, s % 60);
  return fmt::format("{}:{:02d}", s / 60, s % 60);
}

Progress::Progress(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled), tty_(::isatty(STDERR_FILENO) != 0) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

void Progress::update(int64_t done, double loss, double accuracy, double images_per_s) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total_ - done) : 0.0;
  const std::string stats = fmt::format("loss {:.4f}  acc {:5.2f}%  {:.0f} img/s  ETA {}", loss, 100.0 * accuracy,
                                        images_per_s, format_duration(eta));
  if (tty_) {
    if (done != total_ && std::chrono::duration<double>(now - last_draw_).count() < 0.2) return;
    last_draw_ = now;
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * done / std::max<int64_t>(total_, 1));
    std::fprintf(stderr, "\r\033[K%s [%s%s] %lld/%lld  %s", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), static_cast<long long>(done),
                 static_cast<long long>(total_), stats.c_str());
  } else {
    const int64_t decile = 10 * done / std::max<int64_t>(total_, 1);
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(stderr, "%s %lld/%lld  %s\n", label_.c_str(), static_cast<long long>(done),
                 static_cast<long long>(total_), stats.c_str());
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (enabled_ && tty_) std::fprintf(stderr, "\n");
}

}  // namespace s2h::app
