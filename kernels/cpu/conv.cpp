#include "kernels/cpu/conv.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/reduce.h"

namespace s2h::cpu {

namespace {

// col[(n*Ho+ho)*Wo+wo, (kh*KW+kw)*cg + c] = x[n0+n, hi, wi, c0+c] (0 outside).
// Serial: callers run it inside their own parallel loop over images.
template <class T>
void im2col(const ConvGeom& g, const T* x, int64_t n0, int64_t nb, int64_t c0, T* col) {
  const int64_t cg = g.cg(), kcols = g.kh * g.kw * cg;
  for (int64_t n = 0; n < nb; ++n) {
    const T* xn = x + (n0 + n) * g.h * g.w * g.c + c0;
    for (int64_t oh = 0; oh < g.ho; ++oh) {
      T* row = col + (n * g.ho + oh) * g.wo * kcols;  // the Wo output pixels of this output row
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t hi = oh * g.sh - g.ph + i * g.dh;
        for (int64_t j = 0; j < g.kw; ++j) {
          T* dst = row + (i * g.kw + j) * cg;
          // Output columns whose input column wi = ow*sw - pw + j*dw lies inside [0, W).
          const int64_t off = j * g.dw - g.pw;
          int64_t lo = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
          int64_t hi_ow = g.w - off <= 0 ? 0 : (g.w - off + g.sw - 1) / g.sw;
          lo = std::min(lo, g.wo);
          hi_ow = std::clamp(hi_ow, lo, g.wo);
          if (hi < 0 || hi >= g.h) lo = hi_ow = g.wo;  // the whole kernel row is padding
          for (int64_t ow = 0; ow < g.wo; ++ow) {
            T* d = dst + ow * kcols;
            if (ow < lo || ow >= hi_ow) {
              for (int64_t c = 0; c < cg; ++c) d[c] = T(0);
            } else {
              const T* src = xn + (hi * g.w + ow * g.sw + off) * g.c;
              for (int64_t c = 0; c < cg; ++c) d[c] = src[c];
            }
          }
        }
      }
    }
  }
}

// dx[n0+n, hi, wi, c0+c] += col[...]: the adjoint of im2col. Serial, like im2col.
template <class T>
void col2im_add(const ConvGeom& g, const T* col, int64_t n0, int64_t nb, int64_t c0, T* dx) {
  const int64_t cg = g.cg();
  const T* src = col;
  for (int64_t n = 0; n < nb; ++n) {
    T* dxn = dx + (n0 + n) * g.h * g.w * g.c + c0;
    for (int64_t oh = 0; oh < g.ho; ++oh)
      for (int64_t ow = 0; ow < g.wo; ++ow)
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t hi = oh * g.sh - g.ph + i * g.dh;
          for (int64_t j = 0; j < g.kw; ++j, src += cg) {
            const int64_t wi = ow * g.sw - g.pw + j * g.dw;
            if (hi < 0 || hi >= g.h || wi < 0 || wi >= g.w) continue;
            T* d = dxn + (hi * g.w + wi) * g.c;
            for (int64_t c = 0; c < cg; ++c) d[c] += src[c];
          }
        }
  }
}

// The general path splits the batch into tasks of a few images. Each thread
// takes whole tasks and runs im2col and a single-threaded GEMM on a buffer of
// its own (OpenBLAS runs one thread inside an OpenMP region), so the buffers
// stay in cache and the threads never synchronise inside a layer.
// One scratch buffer per thread, allocated on first use (uninitialised unless zero).
template <class T>
class ThreadBuffers {
 public:
  explicit ThreadBuffers(int64_t size, bool zero = false)
      : size_(size), zero_(zero), bufs_(static_cast<size_t>(num_threads())) {}
  T* get(int64_t thread) {
    auto& b = bufs_[static_cast<size_t>(thread)];
    if (!b) {
      b = std::make_unique_for_overwrite<T[]>(static_cast<size_t>(size_));
      if (zero_) std::fill(b.get(), b.get() + size_, T(0));
    }
    return b.get();
  }
  template <class Fn>
  void for_each_used(Fn fn) const {
    for (const auto& b : bufs_)
      if (b) fn(b.get());
  }

 private:
  int64_t size_;
  bool zero_;
  std::vector<std::unique_ptr<T[]>> bufs_;
};

constexpr int64_t kTaskColElements = int64_t{1} << 18;  // ~1 MiB of f32 per im2col buffer

int64_t task_images(const ConvGeom& g) {
  const int64_t per_image = std::max<int64_t>(1, g.ho * g.wo * g.kh * g.kw * g.cg());
  int64_t nb = std::clamp<int64_t>(kTaskColElements / per_image, 1, g.n);
  // Enough tasks to keep every thread busy.
  const int64_t threads = num_threads();
  while (nb > 1 && (g.n + nb - 1) / nb < 2 * threads) nb = (nb + 1) / 2;
  return nb;
}

// Runs body(thread_index, n0, nb) over the tasks, statically split among
// threads. With fewer tasks than threads (a batch of one image, say) the tasks
// run one after the other on the calling thread, outside any parallel region,
// so that BLAS spreads each GEMM over all threads instead.
template <class Body>
void for_each_task(const ConvGeom& g, int64_t nb, Body body) {
  const int64_t tasks = (g.n + nb - 1) / nb;
  if (tasks < num_threads()) {
    for (int64_t k = 0; k < tasks; ++k) body(0, k * nb, std::min(nb, g.n - k * nb));
    return;
  }
  const int threads = num_threads();
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    for (int64_t k = t * tasks / nt; k < (t + 1) * tasks / nt; ++k) {
      const int64_t n0 = k * nb;
      body(t, n0, std::min(nb, g.n - n0));
    }
  }
}

// Depthwise weights [O][KH][KW][1] transposed to [KH][KW][O] for contiguous inner loops.
template <class T>
std::vector<T> depthwise_weights(const ConvGeom& g, const T* w) {
  std::vector<T> wt(static_cast<size_t>(g.kh * g.kw * g.o));
  for (int64_t o = 0; o < g.o; ++o)
    for (int64_t k = 0; k < g.kh * g.kw; ++k) wt[k * g.o + o] = w[o * g.kh * g.kw + k];
  return wt;
}

template <class T>
void depthwise_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y) {
  const std::vector<T> wt = depthwise_weights(g, w);
  const int64_t m = g.o / g.c;  // channel multiplier
  parallel_for(g.n * g.ho, 1, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const int64_t n = r / g.ho, oh = r % g.ho;
      const T* xn = x + n * g.h * g.w * g.c;
      for (int64_t ow = 0; ow < g.wo; ++ow) {
        T* out = y + (r * g.wo + ow) * g.o;
        for (int64_t o = 0; o < g.o; ++o) out[o] = bias ? bias[o] : T(0);
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t hi = oh * g.sh - g.ph + i * g.dh;
          if (hi < 0 || hi >= g.h) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t wi = ow * g.sw - g.pw + j * g.dw;
            if (wi < 0 || wi >= g.w) continue;
            const T* xp = xn + (hi * g.w + wi) * g.c;
            const T* wp = wt.data() + (i * g.kw + j) * g.o;
            if (m == 1) {
              for (int64_t o = 0; o < g.o; ++o) out[o] += xp[o] * wp[o];
            } else {
              for (int64_t o = 0; o < g.o; ++o) out[o] += xp[o / m] * wp[o];
            }
          }
        }
      }
    }
  });
}

template <class T>
void depthwise_backward(const ConvGeom& g, const T* x, const T* w, const T* dy, T* dx, T* dw) {
  const int64_t m = g.o / g.c, kk = g.kh * g.kw;
  if (dx) {
    const std::vector<T> wt = depthwise_weights(g, w);
    std::fill(dx, dx + g.n * g.h * g.w * g.c, T(0));
    parallel_for(g.n, 1, [&](int64_t nb, int64_t ne) {
      for (int64_t n = nb; n < ne; ++n) {
        T* dxn = dx + n * g.h * g.w * g.c;
        for (int64_t oh = 0; oh < g.ho; ++oh)
          for (int64_t ow = 0; ow < g.wo; ++ow) {
            const T* gy = dy + ((n * g.ho + oh) * g.wo + ow) * g.o;
            for (int64_t i = 0; i < g.kh; ++i) {
              const int64_t hi = oh * g.sh - g.ph + i * g.dh;
              if (hi < 0 || hi >= g.h) continue;
              for (int64_t j = 0; j < g.kw; ++j) {
                const int64_t wi = ow * g.sw - g.pw + j * g.dw;
                if (wi < 0 || wi >= g.w) continue;
                T* d = dxn + (hi * g.w + wi) * g.c;
                const T* wp = wt.data() + (i * g.kw + j) * g.o;
                if (m == 1) {
                  for (int64_t o = 0; o < g.o; ++o) d[o] += gy[o] * wp[o];
                } else {
                  for (int64_t o = 0; o < g.o; ++o) d[o / m] += gy[o] * wp[o];
                }
              }
            }
          }
      }
    });
  }
  if (dw) {
    // Per-thread partial sums over output rows, laid out [KH][KW][O], then reduced.
    const int threads = num_threads();
    std::vector<double> partial(static_cast<size_t>(threads * kk * g.o), 0.0);
    const int64_t rows = g.n * g.ho;
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t chunk = (rows + nt - 1) / nt;
      const int64_t rb = t * chunk, re = std::min(rows, rb + chunk);
      double* acc = partial.data() + static_cast<int64_t>(t) * kk * g.o;
      for (int64_t r = rb; r < re; ++r) {
        const int64_t n = r / g.ho, oh = r % g.ho;
        const T* xn = x + n * g.h * g.w * g.c;
        for (int64_t ow = 0; ow < g.wo; ++ow) {
          const T* gy = dy + (r * g.wo + ow) * g.o;
          for (int64_t i = 0; i < g.kh; ++i) {
            const int64_t hi = oh * g.sh - g.ph + i * g.dh;
            if (hi < 0 || hi >= g.h) continue;
            for (int64_t j = 0; j < g.kw; ++j) {
              const int64_t wi = ow * g.sw - g.pw + j * g.dw;
              if (wi < 0 || wi >= g.w) continue;
              const T* xp = xn + (hi * g.w + wi) * g.c;
              double* a = acc + (i * g.kw + j) * g.o;
              if (m == 1) {
                for (int64_t o = 0; o < g.o; ++o) a[o] += gy[o] * xp[o];
              } else {
                for (int64_t o = 0; o < g.o; ++o) a[o] += gy[o] * xp[o / m];
              }
            }
          }
        }
      }
    }
    for (int64_t o = 0; o < g.o; ++o)
      for (int64_t k = 0; k < kk; ++k) {
        double s = 0;
        for (int t = 0; t < threads; ++t) s += partial[static_cast<size_t>((t * kk + k) * g.o + o)];
        dw[o * kk + k] = static_cast<T>(s);
      }
  }
}

}  // namespace

template <class T>
void conv2d_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y) {
  if (g.depthwise() && g.cg() == 1) {
    depthwise_forward(g, x, w, bias, y);
    return;
  }
  const int64_t cg = g.cg(), og = g.og(), kcols = g.kh * g.kw * cg, hw = g.ho * g.wo;
  if (g.pointwise()) {
    gemm<T>(false, true, g.n * hw, g.o, g.c, T(1), x, g.c, w, g.c, T(0), y, g.o);
  } else {
    const int64_t nb = task_images(g);
    ThreadBuffers<T> cols(nb * hw * kcols);
    for_each_task(g, nb, [&](int64_t t, int64_t n0, int64_t cnt) {
      T* col = cols.get(t);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        im2col(g, x, n0, cnt, grp * cg, col);
        gemm<T>(false, true, cnt * hw, og, kcols, T(1), col, kcols, w + grp * og * kcols, kcols, T(0),
                y + n0 * hw * g.o + grp * og, g.o);
      }
    });
  }
  if (bias) {
    const int64_t rows = g.n * hw;
    parallel_for(rows, std::max<int64_t>(1, 16384 / g.o), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        for (int64_t o = 0; o < g.o; ++o) y[r * g.o + o] += bias[o];
    });
  }
}

template <class T>
void conv2d_backward(const ConvGeom& g, const T* x, const T* w, const T* dy, T* dx, T* dw, T* db) {
  const int64_t hw = g.ho * g.wo;
  if (db) sum_middle<T>(dy, 1, g.n * hw, g.o, db);
  if (g.depthwise() && g.cg() == 1) {
    depthwise_backward(g, x, w, dy, dx, dw);
    return;
  }
  const int64_t cg = g.cg(), og = g.og(), kcols = g.kh * g.kw * cg;
  if (g.pointwise()) {
    if (dx) gemm<T>(false, false, g.n * hw, g.c, g.o, T(1), dy, g.o, w, g.c, T(0), dx, g.c);
    if (dw) gemm<T>(true, false, g.o, g.c, g.n * hw, T(1), dy, g.o, x, g.c, T(0), dw, g.c);
    return;
  }
  const int64_t nb = task_images(g);
  ThreadBuffers<T> cols(nb * hw * kcols);
  // Per-thread weight-gradient accumulators (zeroed on first use), added up at the end.
  ThreadBuffers<T> dw_parts(dw ? g.o * kcols : 0, /*zero=*/true);
  for_each_task(g, nb, [&](int64_t t, int64_t n0, int64_t cnt) {
    T* col = cols.get(t);
    if (dx) std::fill(dx + n0 * g.h * g.w * g.c, dx + (n0 + cnt) * g.h * g.w * g.c, T(0));
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const T* dyg = dy + n0 * hw * g.o + grp * og;
      if (dw) {
        im2col(g, x, n0, cnt, grp * cg, col);
        gemm<T>(true, false, og, kcols, cnt * hw, T(1), dyg, g.o, col, kcols, T(1), dw_parts.get(t) + grp * og * kcols,
                kcols);
      }
      if (dx) {
        gemm<T>(false, false, cnt * hw, kcols, og, T(1), dyg, g.o, w + grp * og * kcols, kcols, T(0), col, kcols);
        col2im_add(g, col, n0, cnt, grp * cg, dx);
      }
    }
  });
  if (dw) {
    std::fill(dw, dw + g.o * kcols, T(0));
    dw_parts.for_each_used([&](const T* part) {
      for (int64_t i = 0; i < g.o * kcols; ++i) dw[i] += part[i];
    });
  }
}

template void conv2d_forward<float>(const ConvGeom&, const float*, const float*, const float*, float*);
template void conv2d_forward<double>(const ConvGeom&, const double*, const double*, const double*, double*);
template void conv2d_backward<float>(const ConvGeom&, const float*, const float*, const float*, float*, float*,
                                     float*);
template void conv2d_backward<double>(const ConvGeom&, const double*, const double*, const double*, double*,
                                      double*, double*);

}  // namespace s2h::cpu
