// A flat, reference-counted buffer on one device.
#pragma once

#include <cstddef>
#include <memory>

#include "engine/device.h"

namespace s2h {

class Storage {
 public:
  // Allocates nbytes (uninitialised) on the device. CPU memory is 64-byte aligned.
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
};

}  // namespace s2h
