#include "kernels/cpu/norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/parallel.h"

namespace s2h::cpu {

namespace {
// Per-thread column accumulators over a split of the rows, combined at the end.
// body(acc, row_begin, row_end) adds into acc[k * c + j] for k < nacc.
template <class Body>
void column_accumulate(int64_t rows, int64_t c, int nacc, std::vector<double>& result, Body body) {
  const int threads = num_threads();
  std::vector<double> partial(static_cast<size_t>(threads) * nacc * c, 0.0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t chunk = (rows + nt - 1) / nt;
    const int64_t b = t * chunk, e = std::min(rows, b + chunk);
    if (b < e) body(partial.data() + static_cast<int64_t>(t) * nacc * c, b, e);
  }
  result.assign(static_cast<size_t>(nacc * c), 0.0);
  for (int t = 0; t < threads; ++t)
    for (int64_t k = 0; k < nacc * c; ++k) result[k] += partial[static_cast<size_t>(t * nacc * c + k)];
}
}  // namespace

template <class T>
void channel_mean_var(const T* x, int64_t rows, int64_t c, double* mean, double* var) {
  std::vector<double> s;
  column_accumulate(rows, c, 1, s, [&](double* acc, int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      for (int64_t j = 0; j < c; ++j) acc[j] += x[r * c + j];
  });
  for (int64_t j = 0; j < c; ++j) mean[j] = s[j] / static_cast<double>(rows);
  std::vector<double> m(mean, mean + c);
  column_accumulate(rows, c, 1, s, [&](double* acc, int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      for (int64_t j = 0; j < c; ++j) {
        const double d = x[r * c + j] - m[j];
        acc[j] += d * d;
      }
  });
  for (int64_t j = 0; j < c; ++j) var[j] = s[j] / static_cast<double>(rows);
}

template <class T>
void channel_affine(const T* x, int64_t rows, int64_t c, const T* scale, const T* shift, T* y) {
  parallel_for(rows, std::max<int64_t>(1, 16384 / c), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      for (int64_t j = 0; j < c; ++j) y[r * c + j] = x[r * c + j] * scale[j] + shift[j];
  });
}

template <class T>
void batch_norm_backward(const T* x, const T* dy, int64_t rows, int64_t c, const double* mean,
                         const double* invstd, const T* weight, T* dx, T* dweight, T* dbias) {
  // sums[0]: sum dy; sums[1]: sum dy * xhat
  std::vector<T> m(static_cast<size_t>(c)), is(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) {
    m[j] = static_cast<T>(mean[j]);
    is[j] = static_cast<T>(invstd[j]);
  }
  std::vector<double> sums;
  column_accumulate(rows, c, 2, sums, [&](double* acc, int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      for (int64_t j = 0; j < c; ++j) {
        const T g = dy[r * c + j];
        acc[j] += g;
        acc[c + j] += g * (x[r * c + j] - m[j]) * is[j];
      }
  });
  if (dbias)
    for (int64_t j = 0; j < c; ++j) dbias[j] = static_cast<T>(sums[j]);
  if (dweight)
    for (int64_t j = 0; j < c; ++j) dweight[j] = static_cast<T>(sums[c + j]);
  if (!dx) return;
  // dx = w*invstd * (dy - mean(dy) - xhat * mean(dy*xhat))
  std::vector<T> k1(static_cast<size_t>(c)), k2(static_cast<size_t>(c)), k3(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) {
    const double w = weight ? static_cast<double>(weight[j]) : 1.0;
    const double a = w * invstd[j];
    const double mdy = sums[j] / static_cast<double>(rows), mdyx = sums[c + j] / static_cast<double>(rows);
    k1[j] = static_cast<T>(a);                                  // times dy
    k2[j] = static_cast<T>(-a * mdyx * invstd[j]);              // times (x - mean)
    k3[j] = static_cast<T>(-a * mdy);                           // constant
  }
  parallel_for(rows, std::max<int64_t>(1, 16384 / c), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      for (int64_t j = 0; j < c; ++j)
        dx[r * c + j] = k1[j] * dy[r * c + j] + k2[j] * (x[r * c + j] - m[j]) + k3[j];
  });
}

template <class T>
void layer_norm_forward(const T* x, int64_t rows, int64_t c, const T* weight, const T* bias, double eps, T* y,
                        T* mean, T* rstd) {
  parallel_for(rows, std::max<int64_t>(1, 4096 / c), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* xr = x + r * c;
      double s = 0;
      for (int64_t j = 0; j < c; ++j) s += xr[j];
      const double mu = s / static_cast<double>(c);
      double v = 0;
      for (int64_t j = 0; j < c; ++j) v += (xr[j] - mu) * (xr[j] - mu);
      const double rs = 1.0 / std::sqrt(v / static_cast<double>(c) + eps);
      mean[r] = static_cast<T>(mu);
      rstd[r] = static_cast<T>(rs);
      T* yr = y + r * c;
      const T m = static_cast<T>(mu), is = static_cast<T>(rs);
      for (int64_t j = 0; j < c; ++j) {
        T h = (xr[j] - m) * is;
        if (weight) h *= weight[j];
        if (bias) h += bias[j];
        yr[j] = h;
      }
    }
  });
}

template <class T>
void layer_norm_backward(const T* x, const T* dy, int64_t rows, int64_t c, const T* mean, const T* rstd,
                         const T* weight, T* dx, T* dweight, T* dbias) {
  if (dx) {
    parallel_for(rows, std::max<int64_t>(1, 4096 / c), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* xr = x + r * c;
        const T* gr = dy + r * c;
        double sg = 0, sgx = 0;
        for (int64_t j = 0; j < c; ++j) {
          const double g = weight ? gr[j] * weight[j] : gr[j];
          sg += g;
          sgx += g * (xr[j] - mean[r]) * rstd[r];
        }
        const T mg = static_cast<T>(sg / static_cast<double>(c)), mgx = static_cast<T>(sgx / static_cast<double>(c));
        T* d = dx + r * c;
        for (int64_t j = 0; j < c; ++j) {
          const T g = weight ? gr[j] * weight[j] : gr[j];
          const T xhat = (xr[j] - mean[r]) * rstd[r];
          d[j] = rstd[r] * (g - mg - xhat * mgx);
        }
      }
    });
  }
  if (dweight || dbias) {
    std::vector<double> sums;
    column_accumulate(rows, c, 2, sums, [&](double* acc, int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        for (int64_t j = 0; j < c; ++j) {
          const T g = dy[r * c + j];
          acc[j] += g * (x[r * c + j] - mean[r]) * rstd[r];
          acc[c + j] += g;
        }
    });
    if (dweight)
      for (int64_t j = 0; j < c; ++j) dweight[j] = static_cast<T>(sums[j]);
    if (dbias)
      for (int64_t j = 0; j < c; ++j) dbias[j] = static_cast<T>(sums[c + j]);
  }
}

#define S2H_INSTANTIATE_NORM(T)                                                                                 \
  template void channel_mean_var<T>(const T*, int64_t, int64_t, double*, double*);                             \
  template void channel_affine<T>(const T*, int64_t, int64_t, const T*, const T*, T*);                          \
  template void batch_norm_backward<T>(const T*, const T*, int64_t, int64_t, const double*, const double*,      \
                                       const T*, T*, T*, T*);                                                   \
  template void layer_norm_forward<T>(const T*, int64_t, int64_t, const T*, const T*, double, T*, T*, T*);      \
  template void layer_norm_backward<T>(const T*, const T*, int64_t, int64_t, const T*, const T*, const T*, T*,  \
                                       T*, T*);
S2H_INSTANTIATE_NORM(float)
S2H_INSTANTIATE_NORM(double)

}  // namespace s2h::cpu
