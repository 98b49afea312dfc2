// Errors are exceptions that say what was expected, what came, and where.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace s2h {

// The one exception type of the engine. what() is the user-facing message (one
// line); where() is the source location that raised it, for debugging.
class Error : public std::runtime_error {
 public:
  Error(std::string message, std::string where)
      : std::runtime_error(std::move(message)), where_(std::move(where)) {}
  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

namespace detail {
[[noreturn]] void fail(const char* file, int line, std::string message);
}  // namespace detail

}  // namespace s2h

// S2H_CHECK(cond, "fmt {}", args...): throw s2h::Error with the formatted message.
#define S2H_CHECK(cond, ...)                                              \
  do {                                                                    \
    if (!(cond)) ::s2h::detail::fail(__FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)

#define S2H_FAIL(...) ::s2h::detail::fail(__FILE__, __LINE__, fmt::format(__VA_ARGS__))
