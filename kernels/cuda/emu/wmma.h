// nvcuda::wmma (the <mma.h> subset the kernels use) for the emulator.
//
// A fragment of an R x C tile holds R*C/32 elements per lane; element e of
// lane l is element e*32 + l of the tile in row-major order. That mapping is
// the emulator's own (CUDA leaves it unspecified): load, mma and store agree
// on it, and a kernel that reads fragment elements assuming another mapping
// gets wrong answers here. load_matrix_sync, store_matrix_sync and mma_sync
// are warp collectives: every lane must arrive, with the same pointer, leading
// dimension and layout; pointers must be 256-bit aligned and the leading
// dimension a multiple of 16 bytes, as the CUDA programming guide requires.
// mma_sync sums the K products in double and rounds once to float.
#pragma once

#include <string>

#include "kernels/cuda/emu/emu.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <class Use, int M, int N, int K>
struct Tile;
template <int M, int N, int K>
struct Tile<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct Tile<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct Tile<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = detail::Tile<Use, M, N, K>::rows, cols = detail::Tile<Use, M, N, K>::cols;
  static_assert(rows * cols % 32 == 0, "a fragment's tile must divide among 32 lanes");
  static constexpr int num_elements = rows * cols / 32;
  T x[num_elements];
};

template <class Frag, class V>
inline void fill_fragment(Frag& f, const V& v) {
  for (int e = 0; e < Frag::num_elements; ++e) f.x[e] = v;
}

namespace detail {

using ::s2h::emu::detail::fail;
using ::s2h::emu::detail::Site;
using ::s2h::emu::detail::WarpCall;

// What a lane passes to a load or store.
template <class Frag, class T>
struct MemArgs {
  Frag* frag;
  T* ptr;
  unsigned ldm;
  bool row_major;
};

template <class T>
inline void check_mem(const char* kind, const void* p, unsigned ldm) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    fail(std::string(kind) + ": the pointer is not 256-bit (32-byte) aligned");
  if ((static_cast<size_t>(ldm) * sizeof(T)) % 16 != 0)
    fail(std::string(kind) + ": ldm = " + std::to_string(ldm) + " elements is not a multiple of 16 bytes");
}

// The lanes' posts of one load/store, checked to agree; returns lane 0's (every lane of the mask has posted).
template <class Args>
inline const Args& agreed(const char* kind, const WarpCall* const (&lanes)[32]) {
  const Args& a0 = *static_cast<const Args*>(lanes[0]->in);
  for (int l = 1; l < 32; ++l) {
    const Args& a = *static_cast<const Args*>(lanes[l]->in);
    if (a.ptr != a0.ptr || a.ldm != a0.ldm || a.row_major != a0.row_major)
      fail(std::string(kind) + ": lane " + std::to_string(l) + " passes another pointer, ldm or layout than lane 0");
  }
  return a0;
}

template <class Frag, class T, bool Store>
inline void mem_op(const char* kind, Frag& f, T* p, unsigned ldm, bool row_major, Site site) {
  MemArgs<Frag, T> args{&f, p, ldm, row_major};
  WarpCall c;
  c.kind = kind;
  c.mask = 0xffffffffu;
  c.site = site;
  c.in = &args;
  c.ctx = kind;
  c.run = [](const WarpCall* const(&lanes)[32], const void* k) {
    const char* name = static_cast<const char*>(k);
    const MemArgs<Frag, T>& a = agreed<MemArgs<Frag, T>>(name, lanes);
    check_mem<T>(name, a.ptr, a.ldm);
    for (int l = 0; l < 32; ++l) {
      Frag* fl = static_cast<const MemArgs<Frag, T>*>(lanes[l]->in)->frag;
      for (int e = 0; e < Frag::num_elements; ++e) {
        const int idx = e * 32 + l, r = idx / Frag::cols, col = idx % Frag::cols;
        T* at = a.ptr + (a.row_major ? static_cast<size_t>(r) * a.ldm + col : static_cast<size_t>(col) * a.ldm + r);
        if constexpr (Store) {
          *at = fl->x[e];
        } else {
          fl->x[e] = *at;
        }
      }
    }
  };
  ::s2h::emu::detail::warp_call(c);
}

template <class L>
constexpr bool is_row = std::is_same_v<L, row_major>;

}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm,
                             std::source_location l = std::source_location::current()) {
  static_assert(!std::is_void_v<Layout>, "matrix_a / matrix_b fragments carry their layout");
  detail::mem_op<fragment<Use, M, N, K, T, Layout>, const T, false>(
      "wmma::load_matrix_sync", f, p, ldm, detail::is_row<Layout>, ::s2h::emu::detail::Site::of(l));
}
template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout,
                             std::source_location l = std::source_location::current()) {
  detail::mem_op<fragment<accumulator, M, N, K, T>, const T, false>(
      "wmma::load_matrix_sync", f, p, ldm, layout == mem_row_major, ::s2h::emu::detail::Site::of(l));
}
template <int M, int N, int K, class T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout,
                              std::source_location l = std::source_location::current()) {
  auto& mf = const_cast<fragment<accumulator, M, N, K, T>&>(f);  // only read
  detail::mem_op<fragment<accumulator, M, N, K, T>, T, true>("wmma::store_matrix_sync", mf, p, ldm,
                                                             layout == mem_row_major, ::s2h::emu::detail::Site::of(l));
}

template <int M, int N, int K, class TA, class LA, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TA, LB>& b, const fragment<accumulator, M, N, K, TC>& c,
                     std::source_location l = std::source_location::current()) {
  using FA = fragment<matrix_a, M, N, K, TA, LA>;
  using FB = fragment<matrix_b, M, N, K, TA, LB>;
  using FC = fragment<accumulator, M, N, K, TC>;
  struct Args {
    FC* d;
    const FA* a;
    const FB* b;
    const FC* c;
  } args{&d, &a, &b, &c};
  ::s2h::emu::detail::WarpCall call;
  call.kind = "wmma::mma_sync";
  call.mask = 0xffffffffu;
  call.site = ::s2h::emu::detail::Site::of(l);
  call.in = &args;
  call.run = [](const ::s2h::emu::detail::WarpCall* const(&lanes)[32], const void*) {
    float a_[M][K], b_[K][N], c_[M][N];  // the 32 lanes' fragments, assembled
    for (int ln = 0; ln < 32; ++ln) {
      const Args& x = *static_cast<const Args*>(lanes[ln]->in);
      // Element e of lane ln is element e * 32 + ln of the row-major tile.
      auto place = [ln]<class F>(const F& f, float* tile) {
        for (int e = 0; e < F::num_elements; ++e) tile[e * 32 + ln] = static_cast<float>(f.x[e]);
      };
      place(*x.a, &a_[0][0]);
      place(*x.b, &b_[0][0]);
      place(*x.c, &c_[0][0]);
    }
    for (int ln = 0; ln < 32; ++ln) {
      const Args& x = *static_cast<const Args*>(lanes[ln]->in);
      for (int e = 0; e < FC::num_elements; ++e) {
        const int i = e * 32 + ln, r = i / N, col = i % N;
        double s = c_[r][col];
        for (int k = 0; k < K; ++k) s += static_cast<double>(a_[r][k]) * b_[k][col];
        x.d->x[e] = static_cast<TC>(s);
      }
    }
  };
  ::s2h::emu::detail::warp_call(call);
}

}  // namespace nvcuda::wmma
