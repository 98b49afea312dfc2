// Shapes, strides and the small arithmetic around them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace s2h {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
Shape contiguous_strides(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3, 4]"
// Wraps a possibly negative axis into [0, ndim); throws naming `what` if out of range.
int64_t normalize_axis(int64_t axis, int64_t ndim, const char* what = "axis");
// NumPy broadcasting of two shapes; throws naming both shapes if incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op = "broadcast");

}  // namespace s2h
