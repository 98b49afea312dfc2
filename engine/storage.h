// A flat, reference-counted buffer on one device.
#pragma once

#include <cstddef>
#include <memory>

#include "engine/device.h"

namespace s2h {

// Tests: when on, every new allocation is filled with 0xff bytes (NaN in f32
// and bf16, -1 in integers), so an op that leaves part of its output
// unwritten fails its comparison instead of passing on stale zeros.
void set_poison_allocations(bool on);
bool poison_allocations();

// Sets the poisoning for a scope, restores the previous setting after.
class PoisonGuard {
 public:
  explicit PoisonGuard(bool on) : prev_(poison_allocations()) { set_poison_allocations(on); }
  ~PoisonGuard() { set_poison_allocations(prev_); }
  PoisonGuard(const PoisonGuard&) = delete;
  PoisonGuard& operator=(const PoisonGuard&) = delete;

 private:
  bool prev_;
};

class Storage {
 public:
  // Allocates nbytes (uninitialised) on the device. CPU memory is 64-byte
  // aligned; pinned CPU memory is page-locked (needs the CUDA backend); CUDA
  // memory comes from the device's stream-ordered pool.
  Storage(size_t nbytes, Device device, bool pinned = false);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  bool pinned() const { return pinned_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  bool pinned_ = false;
};

}  // namespace s2h
