// Element types, shared by the engine and the kernels (the kernels' launchers
// take a DType with raw pointers; the engine adds names and dispatch).
#pragma once

#include <cstddef>
#include <cstdint>

namespace s2h {

// F64 is not a training type: it exists so that gradient checks can run in
// double precision on the CPU. The CUDA backend computes in F32 and BF16.
enum class DType : uint8_t { F32, F64, BF16, I64, U8 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

}  // namespace s2h
