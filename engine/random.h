// Random numbers: a seedable generator and the process-wide default one.
#pragma once

#include <cstdint>
#include <random>

namespace s2h {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : engine_(seed) {}
  void seed(uint64_t s) {
    engine_.seed(s);
    normal_.reset();
  }
  uint64_t next_u64() { return engine_(); }
  double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(engine_); }  // [0,1)
  double normal() { return normal_(engine_); }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(engine_); }
  std::mt19937_64& engine() { return engine_; }

 private:
  std::mt19937_64 engine_;
  std::normal_distribution<double> normal_{0.0, 1.0};
};

// The default generator used when an op or initialiser gets none.
Generator& default_generator();
void manual_seed(uint64_t seed);

}  // namespace s2h
