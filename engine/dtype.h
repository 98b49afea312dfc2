// Element types and the bf16 storage type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kernels/bf16.h"
#include "kernels/dtype.h"

namespace s2h {

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
