// A one-line progress bar on a terminal, or periodic lines when stderr is not one.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace s2h::app {

class Progress {
 public:
  // total: steps in this phase; label: "epoch 1/3".
  Progress(std::string label, int64_t total, bool enabled);
  // Reports step `done` (1-based) with the running loss, accuracy and throughput.
  void update(int64_t done, double loss, double accuracy, double images_per_s);
  void finish();

 private:
  std::string label_;
  int64_t total_;
  bool enabled_, tty_;
  int64_t last_decile_ = -1;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

std::string format_duration(double seconds);  // "1:02:03" or "2:03"

}  // namespace s2h::app
