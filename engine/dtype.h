// Element types and the bf16 storage type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kernels/bf16.h"

namespace s2h {

// F64 is not a training type: it exists so that gradient checks can run in
// double precision on the CPU.
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

// Lower-case name used in messages ("f32").
const char* dtype_name(DType t);
// Name used by the safetensors format ("F32").
const char* dtype_safetensors_name(DType t);
// Inverse of dtype_safetensors_name; throws s2h::Error on an unknown name.
DType dtype_from_safetensors_name(std::string_view name);
// Parses "f32", "bf16", ... (as written by dtype_name); throws on unknown.
DType dtype_from_name(std::string_view name);

inline bool is_floating(DType t) { return t == DType::F32 || t == DType::F64 || t == DType::BF16; }

template <class T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::F32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::F64; };
template <> struct DTypeOf<bf16> { static constexpr DType value = DType::BF16; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::I64; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::U8; };
template <class T> inline constexpr DType dtype_of = DTypeOf<T>::value;

}  // namespace s2h
