// CPU panel kernels, written once over at::vec and compiled once per CPU capability.
//
// Included by panel_kernels_default.cpp and simd/panel_kernels_{avx2,avx512}.cpp, each of
// which sets CPU_CAPABILITY (and, for AVX2 and AVX-512, the target) first; the namespace
// carries the capability so the instantiations never collide. The body of every row runs
// SIMD (VecMath), its tail runs ScalarMath — the CUDA kernels' arithmetic. A SIMD build
// includes panel_kernels_headers.h before its target pragma (that header says why).
#pragma once

#include "panel_kernels_headers.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "../numerics.h"

namespace pretrain_mm::cpu::CPU_CAPABILITY {

template <typename T>
struct VecMath {
  using V = at::vec::Vectorized<T>;
  static V exp(V x) { return x.exp(); }
  static V log1p(V x) { return x.log1p(); }
  static V abs(V x) { return x.abs(); }
  static V max(V a, V b) { return at::vec::maximum(a, b); }
};

template <typename T> using Vec = at::vec::Vectorized<T>;

// The math policy for a value type: SIMD for a vector, ScalarMath for a lone element.
template <typename V> struct MathOf { using type = VecMath<typename V::value_type>; };
template <> struct MathOf<float> { using type = ScalarMath; };
template <> struct MathOf<double> { using type = ScalarMath; };
template <typename V> using MathFor = typename MathOf<V>::type;

template <typename V, typename T>
inline V load(const T* p) {
  if constexpr (std::is_same_v<V, T>)
    return *p;
  else
    return V::loadu(p);
}
template <typename V, typename T>
inline void store(T* p, V v) {
  if constexpr (std::is_same_v<V, T>)
    *p = v;
  else
    v.store(p);
}

// Calls f(j, V{}) for j in [a, b): V = Vec<T> at steps of one vector over the body,
// V = T one element at a time over the tail. f writes its arithmetic once, in V.
template <typename T, typename F>
inline void simd_loop(int64_t a, int64_t b, const F& f) {
  constexpr int64_t W = Vec<T>::size();
  int64_t j = a;
  for (; j + W <= b; j += W) f(j, Vec<T>{});
  for (; j < b; ++j) f(j, T{});
}

// A sum over a simd_loop: vector lanes and scalar tail, folded at the end.
template <typename T>
struct SumAcc {
  Vec<T> lanes{T(0)};
  double tail = 0;
  void add(Vec<T> x) { lanes = lanes + x; }
  void add(T x) { tail += x; }
  double total() const {
    return tail + at::vec::vec_reduce_all<T>([](Vec<T> u, Vec<T> v) { return u + v; }, lanes);
  }
};

// A NaN-propagating maximum over a simd_loop.
template <typename T>
struct MaxAcc {
  Vec<T> lanes{neg_infinity<T>()};
  T tail = neg_infinity<T>();
  void add(Vec<T> x) { lanes = VecMath<T>::max(lanes, x); }
  void add(T x) { tail = ScalarMath::max(tail, x); }
  T total() const {
    return ScalarMath::max(tail,
                           at::vec::vec_reduce_all<T>([](Vec<T> u, Vec<T> v) { return VecMath<T>::max(u, v); }, lanes));
  }
};

// Calls body(a, b) for the column ranges of a row that exclude the positive column d
// (d may lie outside [0, cols), in which case the whole row is one range).
template <typename F>
inline void for_off_diagonal(int64_t cols, int64_t d, const F& body) {
  if (d < 0 || d >= cols) {
    body(0, cols);
  } else {
    body(0, d);
    body(d + 1, cols);
  }
}

// Rows per parallel task: a panel row is thousands of elements, so a few rows suffice.
constexpr int64_t kRowGrain = 4;

template <typename T>
void softmax_forward_panel(const Panel<T>& P, const SoftmaxForwardState<T>& st) {
  const T s = *P.scale;
  at::parallel_for(0, P.rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* p = P.p + i * P.ld;
      MaxAcc<T> max_acc;
      simd_loop<T>(0, P.cols, [&](int64_t j, auto v) {
        using V = decltype(v);
        max_acc.add(V(s) * load<V>(p + j));
      });
      const T m = max_acc.total();
      SumAcc<T> sum;
      simd_loop<T>(0, P.cols, [&](int64_t j, auto v) {
        using V = decltype(v);
        sum.add(lse_term<MathFor<V>>(V(s) * load<V>(p + j), V(m)));
      });
      const int64_t r = P.row0 + i;
      lse_merge(st.row_max[r], st.row_sum[r], m, static_cast<T>(sum.total()));
      const int64_t d = P.offset + r - P.col0;
      if (d >= 0 && d < P.cols) st.diag[r] = s * p[d];
    }
  });
  // Columns: strips one SIMD vector wide, walked down the panel's rows twice (max, then sum);
  // the last, narrower strip one column at a time.
  constexpr int64_t W = Vec<T>::size();
  const int64_t strips = (P.cols + W - 1) / W;
  at::parallel_for(0, strips, 1, [&](int64_t begin, int64_t end) {
    for (int64_t strip = begin; strip < end; ++strip) {
      const int64_t j0 = strip * W;
      auto column_stats = [&](int64_t j, auto v) {
        using V = decltype(v);
        V m(neg_infinity<T>()), sum(T(0));
        for (int64_t i = 0; i < P.rows; ++i) m = MathFor<V>::max(m, V(s) * load<V>(P.p + i * P.ld + j));
        for (int64_t i = 0; i < P.rows; ++i) sum = sum + lse_term<MathFor<V>>(V(s) * load<V>(P.p + i * P.ld + j), m);
        T ms[W], sums[W];
        store(ms, m);
        store(sums, sum);
        constexpr int64_t lanes = std::is_same_v<V, T> ? 1 : W;
        for (int64_t l = 0; l < lanes; ++l)
          lse_merge(st.col_max[P.col0 + j + l], st.col_sum[P.col0 + j + l], ms[l], sums[l]);
      };
      simd_loop<T>(j0, std::min<int64_t>(j0 + W, P.cols), column_stats);
    }
  });
}

template <typename T>
void softmax_backward_panel(const Panel<T>& P, const SoftmaxBackwardState<T>& st) {
  const T s = *P.scale;
  const double dscale = at::parallel_reduce(
      0, P.rows, kRowGrain, 0.0,
      [&](int64_t begin, int64_t end, double acc) {
        const T* c = st.col_lse + P.col0;
        const T* gc = st.g_col + P.col0;
        for (int64_t i = begin; i < end; ++i) {
          T* p = P.p + i * P.ld;
          const int64_t r = P.row0 + i;
          const int64_t d = P.offset + r - P.col0;
          const T ri = st.row_lse[r], gri = st.g_row[r];
          SumAcc<T> row;
          for_off_diagonal(P.cols, d, [&](int64_t a, int64_t e) {
            simd_loop<T>(a, e, [&](int64_t j, auto v) {
              using V = decltype(v);
              const V vp = load<V>(p + j);
              const V g = softmax_logit_grad<MathFor<V>>(V(s) * vp, V(ri), load<V>(c + j), V(gri), load<V>(gc + j));
              row.add(g * vp);
              store(p + j, V(s) * g);
            });
          });
          if (d >= 0 && d < P.cols) {
            // The positive pair's g_diag joins its logit's gradient before anything else uses
            // it: where the loss is saturated that gradient is exactly 0, in the panel and in
            // d logit_scale alike (added apart, their roundings would not cancel).
            const T g = softmax_logit_grad<ScalarMath>(s * p[d], ri, c[d], gri, gc[d]) + st.g_diag[r];
            row.add(g * p[d]);
            p[d] = s * g;
          }
          acc += row.total();
        }
        return acc;
      },
      std::plus<double>());
  *st.dscale += static_cast<T>(dscale);
}

template <typename T>
void sigmoid_forward_panel(const Panel<T>& P, const SigmoidForwardState<T>& st) {
  const T s = *P.scale, b = *P.bias;
  at::parallel_for(0, P.rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* p = P.p + i * P.ld;
      const int64_t r = P.row0 + i;
      const int64_t d = P.offset + r - P.col0;
      SumAcc<T> loss;
      for_off_diagonal(P.cols, d, [&](int64_t a, int64_t e) {
        simd_loop<T>(a, e, [&](int64_t j, auto v) {
          using V = decltype(v);
          loss.add(sigmoid_pair_loss<MathFor<V>>(V(s) * load<V>(p + j) + V(b), V(-1)));
        });
      });
      double total = loss.total();
      if (d >= 0 && d < P.cols) total += sigmoid_pair_loss<ScalarMath>(s * p[d] + b, T(1));
      st.row_loss[r] += static_cast<T>(total);
    }
  });
}

template <typename T>
void sigmoid_backward_panel(const Panel<T>& P, const SigmoidBackwardState<T>& st) {
  const T s = *P.scale, b = *P.bias;
  struct Sums { double scale = 0, bias = 0; };
  const Sums sums = at::parallel_reduce(
      0, P.rows, kRowGrain, Sums{},
      [&](int64_t begin, int64_t end, Sums acc) {
        for (int64_t i = begin; i < end; ++i) {
          T* p = P.p + i * P.ld;
          const int64_t r = P.row0 + i;
          const int64_t d = P.offset + r - P.col0;
          const T g = st.g_row[r];
          SumAcc<T> by_scale, by_bias;
          // Each logit gradient dl feeds three places: the panel (as s * dl, for the
          // matmuls), the scale's gradient (dl * p) and the bias's gradient (dl).
          auto pair = [&](int64_t j, auto v, auto z) {
            using V = decltype(v);
            const V vp = load<V>(p + j);
            const V dl = sigmoid_pair_grad<MathFor<V>>(V(s) * vp + V(b), V(z), V(g));
            by_scale.add(dl * vp);
            by_bias.add(dl);
            store(p + j, V(s) * dl);
          };
          for_off_diagonal(P.cols, d, [&](int64_t a, int64_t e) {
            simd_loop<T>(a, e, [&](int64_t j, auto v) { pair(j, v, T(-1)); });
          });
          if (d >= 0 && d < P.cols) pair(d, T{}, T(1));
          acc.scale += by_scale.total();
          acc.bias += by_bias.total();
        }
        return acc;
      },
      [](Sums x, Sums y) { return Sums{x.scale + y.scale, x.bias + y.bias}; });
  *st.dscale += static_cast<T>(sums.scale);
  *st.dbias += static_cast<T>(sums.bias);
}

#define PM_STR2(x) #x
#define PM_STR(x) PM_STR2(x)
template <typename T>
PanelKernels<T> kernels() {
  return {&softmax_forward_panel<T>, &softmax_backward_panel<T>, &sigmoid_forward_panel<T>, &sigmoid_backward_panel<T>,
          PM_STR(CPU_CAPABILITY)};
}
template PanelKernels<float> kernels<float>();
template PanelKernels<double> kernels<double>();

}  // namespace pretrain_mm::cpu::CPU_CAPABILITY
