#include "kernels/cpu/pool.h"

#include <algorithm>
#include <limits>

#include "kernels/cpu/parallel.h"

namespace s2h::cpu {

template <class T>
void max_pool2d_forward(const PoolGeom& g, const T* x, T* y, int32_t* argmax) {
  parallel_for(g.n * g.ho, 1, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const int64_t n = r / g.ho, oh = r % g.ho;
      const T* xn = x + n * g.h * g.w * g.c;
      const int64_t h0 = std::max<int64_t>(0, oh * g.sh - g.ph), h1 = std::min(g.h, oh * g.sh - g.ph + g.kh);
      for (int64_t ow = 0; ow < g.wo; ++ow) {
        const int64_t w0 = std::max<int64_t>(0, ow * g.sw - g.pw), w1 = std::min(g.w, ow * g.sw - g.pw + g.kw);
        T* __restrict out = y + (r * g.wo + ow) * g.c;
        int32_t* __restrict am = argmax + (r * g.wo + ow) * g.c;
        // The window is never empty (padding <= kernel/2). Start from its first
        // element; a larger value or a NaN replaces the current one (NaN propagates).
        const T* __restrict first = xn + (h0 * g.w + w0) * g.c;
        const int32_t first_pos = static_cast<int32_t>(h0 * g.w + w0);
        for (int64_t c = 0; c < g.c; ++c) {
          out[c] = first[c];
          am[c] = first_pos;
        }
        for (int64_t hi = h0; hi < h1; ++hi)
          for (int64_t wi = (hi == h0 ? w0 + 1 : w0); wi < w1; ++wi) {
            const T* __restrict xp = xn + (hi * g.w + wi) * g.c;
            const int32_t pos = static_cast<int32_t>(hi * g.w + wi);
            for (int64_t c = 0; c < g.c; ++c) {
              const T v = xp[c];
              const bool take = v > out[c] || v != v;
              out[c] = take ? v : out[c];
              am[c] = take ? pos : am[c];
            }
          }
      }
    }
  });
}

template <class T>
void max_pool2d_backward(const PoolGeom& g, const T* dy, const int32_t* argmax, T* dx) {
  std::fill(dx, dx + g.n * g.h * g.w * g.c, T(0));
  parallel_for(g.n, 1, [&](int64_t nb, int64_t ne) {
    for (int64_t n = nb; n < ne; ++n) {
      T* dxn = dx + n * g.h * g.w * g.c;
      const int64_t base = n * g.ho * g.wo * g.c;
      for (int64_t k = 0; k < g.ho * g.wo; ++k)
        for (int64_t c = 0; c < g.c; ++c) {
          dxn[argmax[base + k * g.c + c] * g.c + c] += dy[base + k * g.c + c];
        }
    }
  });
}

namespace {
struct Window {
  int64_t h0, h1, w0, w1;
  double inv_count;
};
Window avg_window(const PoolGeom& g, bool count_include_pad, int64_t oh, int64_t ow) {
  int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  int64_t h1 = std::min(h0 + g.kh, g.h + g.ph), w1 = std::min(w0 + g.kw, g.w + g.pw);
  const int64_t pool_size = (h1 - h0) * (w1 - w0);
  h0 = std::max<int64_t>(h0, 0);
  w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, g.h);
  w1 = std::min(w1, g.w);
  const int64_t count = count_include_pad ? pool_size : (h1 - h0) * (w1 - w0);
  return {h0, h1, w0, w1, count > 0 ? 1.0 / static_cast<double>(count) : 0.0};
}
}  // namespace

template <class T>
void avg_pool2d_forward(const PoolGeom& g, bool count_include_pad, const T* x, T* y) {
  parallel_for(g.n * g.ho, 1, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const int64_t n = r / g.ho, oh = r % g.ho;
      const T* xn = x + n * g.h * g.w * g.c;
      for (int64_t ow = 0; ow < g.wo; ++ow) {
        T* out = y + (r * g.wo + ow) * g.c;
        const Window win = avg_window(g, count_include_pad, oh, ow);
        std::fill(out, out + g.c, T(0));
        for (int64_t hi = win.h0; hi < win.h1; ++hi)
          for (int64_t wi = win.w0; wi < win.w1; ++wi) {
            const T* xp = xn + (hi * g.w + wi) * g.c;
            for (int64_t c = 0; c < g.c; ++c) out[c] += xp[c];
          }
        const T s = static_cast<T>(win.inv_count);
        for (int64_t c = 0; c < g.c; ++c) out[c] *= s;
      }
    }
  });
}

template <class T>
void avg_pool2d_backward(const PoolGeom& g, bool count_include_pad, const T* dy, T* dx) {
  std::fill(dx, dx + g.n * g.h * g.w * g.c, T(0));
  parallel_for(g.n, 1, [&](int64_t nb, int64_t ne) {
    for (int64_t n = nb; n < ne; ++n) {
      T* dxn = dx + n * g.h * g.w * g.c;
      for (int64_t oh = 0; oh < g.ho; ++oh)
        for (int64_t ow = 0; ow < g.wo; ++ow) {
          const T* gy = dy + ((n * g.ho + oh) * g.wo + ow) * g.c;
          const Window win = avg_window(g, count_include_pad, oh, ow);
          const T s = static_cast<T>(win.inv_count);
          for (int64_t hi = win.h0; hi < win.h1; ++hi)
            for (int64_t wi = win.w0; wi < win.w1; ++wi) {
              T* d = dxn + (hi * g.w + wi) * g.c;
              for (int64_t c = 0; c < g.c; ++c) d[c] += gy[c] * s;
            }
        }
    }
  });
}

namespace {
inline int64_t start_index(int64_t i, int64_t out, int64_t in) { return (i * in) / out; }
inline int64_t end_index(int64_t i, int64_t out, int64_t in) { return ((i + 1) * in + out - 1) / out; }
}  // namespace

template <class T>
void adaptive_avg_pool2d_forward(int64_t n, int64_t h, int64_t w, int64_t c, int64_t ho, int64_t wo, const T* x,
                                 T* y) {
  parallel_for(n * ho, 1, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const int64_t b = r / ho, oh = r % ho;
      const int64_t h0 = start_index(oh, ho, h), h1 = end_index(oh, ho, h);
      const T* xn = x + b * h * w * c;
      for (int64_t ow = 0; ow < wo; ++ow) {
        const int64_t w0 = start_index(ow, wo, w), w1 = end_index(ow, wo, w);
        T* out = y + (r * wo + ow) * c;
        std::fill(out, out + c, T(0));
        for (int64_t hi = h0; hi < h1; ++hi)
          for (int64_t wi = w0; wi < w1; ++wi) {
            const T* xp = xn + (hi * w + wi) * c;
            for (int64_t k = 0; k < c; ++k) out[k] += xp[k];
          }
        const T s = T(1) / static_cast<T>((h1 - h0) * (w1 - w0));
        for (int64_t k = 0; k < c; ++k) out[k] *= s;
      }
    }
  });
}

template <class T>
void adaptive_avg_pool2d_backward(int64_t n, int64_t h, int64_t w, int64_t c, int64_t ho, int64_t wo, const T* dy,
                                  T* dx) {
  std::fill(dx, dx + n * h * w * c, T(0));
  parallel_for(n, 1, [&](int64_t nb, int64_t ne) {
    for (int64_t b = nb; b < ne; ++b) {
      T* dxn = dx + b * h * w * c;
      for (int64_t oh = 0; oh < ho; ++oh) {
        const int64_t h0 = start_index(oh, ho, h), h1 = end_index(oh, ho, h);
        for (int64_t ow = 0; ow < wo; ++ow) {
          const int64_t w0 = start_index(ow, wo, w), w1 = end_index(ow, wo, w);
          const T* gy = dy + ((b * ho + oh) * wo + ow) * c;
          const T s = T(1) / static_cast<T>((h1 - h0) * (w1 - w0));
          for (int64_t hi = h0; hi < h1; ++hi)
            for (int64_t wi = w0; wi < w1; ++wi) {
              T* d = dxn + (hi * w + wi) * c;
              for (int64_t k = 0; k < c; ++k) d[k] += gy[k] * s;
            }
        }
      }
    }
  });
}

#define S2H_INSTANTIATE_POOL(T)                                                                          \
  template void max_pool2d_forward<T>(const PoolGeom&, const T*, T*, int32_t*);                          \
  template void max_pool2d_backward<T>(const PoolGeom&, const T*, const int32_t*, T*);                   \
  template void avg_pool2d_forward<T>(const PoolGeom&, bool, const T*, T*);                              \
  template void avg_pool2d_backward<T>(const PoolGeom&, bool, const T*, T*);                             \
  template void adaptive_avg_pool2d_forward<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,     \
                                               const T*, T*);                                            \
  template void adaptive_avg_pool2d_backward<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,    \
                                                const T*, T*);
S2H_INSTANTIATE_POOL(float)
S2H_INSTANTIATE_POOL(double)

}  // namespace s2h::cpu
