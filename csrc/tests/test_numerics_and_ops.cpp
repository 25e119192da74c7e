// C++ tests of pretrain_mm's ops library, run by ctest:
//   (a) the numerics.h formulas against long-double references, edge cases included;
//   (b) the registered ops, called through the dispatcher as any C++ caller would, against a
//       plain ATen computation of the same loss (autograd for the backwards).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <tuple>

#include "numerics.h"

namespace {

using namespace pretrain_mm;
using at::Tensor;

int failures = 0, checks = 0;

void check(bool ok, const std::string& what) {
  ++checks;
  if (!ok && ++failures <= 40) std::printf("FAIL %s\n", what.c_str());
}

// NaN matches NaN, an infinity the same infinity, finite values to atol + rtol * |want|.
bool close(long double got, long double want, long double rtol, long double atol = 0) {
  if (std::isnan(got) || std::isnan(want)) return std::isnan(got) && std::isnan(want);
  if (std::isinf(got) || std::isinf(want)) return got == want;
  return std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

std::string fmt(const char* what, long double got, long double want) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: got %.20Lg, want %.20Lg", what, got, want);
  return buf;
}

template <typename T>
const char* tname() {
  return sizeof(T) == 4 ? "float" : "double";
}

template <typename T>
long double eps() {
  return sizeof(T) == 4 ? 4e-7L : 1e-15L;
}

// ---- (a) numerics.h --------------------------------------------------------------------

long double ref_softplus(long double t) { return t > 0 ? t + std::log1p(std::exp(-t)) : std::log1p(std::exp(t)); }

template <typename T>
void numerics() {
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const std::string ty = tname<T>();

  // ScalarMath::max propagates a NaN from either side.
  check(std::isnan(ScalarMath::max(nan, T(1))) && std::isnan(ScalarMath::max(T(1), nan)), ty + " max NaN");
  check(ScalarMath::max(T(-inf), T(2)) == T(2) && ScalarMath::max(T(3), T(2)) == T(3), ty + " max");

  // lse_merge: (m, s) means m + log(s).
  auto merged = [](T m, T s, T m2, T s2) {
    lse_merge(m, s, m2, s2);
    return static_cast<long double>(m) + std::log(static_cast<long double>(s));
  };
  const struct {
    T m, s, m2, s2;
  } merges[] = {
      {T(1), T(2), T(3), T(4)}, {T(3), T(4), T(1), T(2)},         {T(-5), T(1), T(80), T(3)},
      {T(0), T(1), T(0), T(1)}, {T(-200), T(7), T(-201), T(0.5)}, {T(60), T(1), T(-60), T(1e6)},
  };
  for (const auto& c : merges) {
    const long double want = std::log(c.s * std::exp((long double)c.m) + c.s2 * std::exp((long double)c.m2));
    check(close(merged(c.m, c.s, c.m2, c.s2), want, 4 * eps<T>(), 4 * eps<T>()),
          fmt((ty + " lse_merge").c_str(), merged(c.m, c.s, c.m2, c.s2), want));
  }
  // An empty partial (-inf, 0) changes nothing, on either side; two empties stay empty.
  {
    T m = T(2), s = T(3);
    lse_merge(m, s, -inf, T(0));
    check(m == T(2) && s == T(3), ty + " lse_merge empty partial");
    T m0 = -inf, s0 = T(0);
    lse_merge(m0, s0, T(2), T(3));
    check(m0 == T(2) && s0 == T(3), ty + " lse_merge into empty");
    T me = -inf, se = T(0);
    lse_merge(me, se, -inf, T(0));
    check(me == -inf && se == T(0), ty + " lse_merge empty + empty");
    // A block of -inf logits has (m, s) = (-inf, NaN) (exp(-inf - -inf)); it must be skipped.
    T mb = T(1), sb = T(2);
    lse_merge(mb, sb, -inf, nan);
    check(mb == T(1) && sb == T(2), ty + " lse_merge skips an all -inf block");
  }
  // NaN on either side makes the sum NaN (so m + log(s) is NaN).
  check(std::isnan(merged(T(1), T(2), nan, nan)), ty + " lse_merge NaN partial");
  check(std::isnan(merged(nan, nan, T(1), T(2))), ty + " lse_merge NaN running");
  check(std::isnan(merged(T(1), nan, T(5), T(2))), ty + " lse_merge NaN sum stays");
  // +inf logits: a finite running pair merged with (inf, 1) gives +inf.
  check(merged(T(1), T(2), inf, T(1)) == inf, ty + " lse_merge +inf");

  // softplus, stable at both ends and exact at +-large.
  const T ts[] = {T(-1000), T(-100), T(-50), T(-20), T(-1),   T(-1e-3), T(0),
                  T(1e-3),  T(1),    T(20),  T(50),  T(1000), T(1e30)};
  for (T t : ts) {
    const long double want = ref_softplus(t), got = softplus<ScalarMath>(t);
    // Relative accuracy wherever the result is a normal number of T.
    const long double tiny = std::numeric_limits<T>::min();
    check(close(got, want, 8 * eps<T>(), tiny),
          fmt((ty + " softplus(" + std::to_string(double(t)) + ")").c_str(), got, want));
  }
  check(softplus<ScalarMath>(T(1e30)) == T(1e30), ty + " softplus(+large) == t exactly");
  check(softplus<ScalarMath>(inf) == inf && softplus<ScalarMath>(-inf) == T(0), ty + " softplus(+-inf)");
  check(std::isnan(softplus<ScalarMath>(nan)), ty + " softplus(NaN)");

  // sigmoid_pair_loss(x, z) = softplus(-z x).
  for (T x : {T(-30), T(-2), T(0), T(0.5), T(40)})
    for (T z : {T(1), T(-1)}) {
      const long double want = ref_softplus(-(long double)z * x);
      check(close(sigmoid_pair_loss<ScalarMath>(x, z), want, 8 * eps<T>(), 0),
            fmt((ty + " sigmoid_pair_loss").c_str(), sigmoid_pair_loss<ScalarMath>(x, z), want));
    }

  // sigmoid_pair_grad(x, z, g) = -z g sigmoid(-z x), and its limits.
  for (T x : {T(-80), T(-10), T(-1), T(0), T(0.25), T(3), T(30), T(80)})
    for (T z : {T(1), T(-1)}) {
      const T g = T(0.75);
      const long double want = -(long double)z * g / (1 + std::exp((long double)z * x));
      const long double got = sigmoid_pair_grad<ScalarMath>(x, z, g);
      const long double tiny = std::numeric_limits<T>::min();
      check(close(got, want, 8 * eps<T>(), tiny), fmt((ty + " sigmoid_pair_grad").c_str(), got, want));
    }
  const T g = T(2);
  check(sigmoid_pair_grad<ScalarMath>(T(1e4), T(1), g) == T(0), ty + " sigmoid_pair_grad(+large, +1) == 0");
  check(sigmoid_pair_grad<ScalarMath>(T(-1e4), T(-1), g) == T(0), ty + " sigmoid_pair_grad(-large, -1) == 0");
  check(sigmoid_pair_grad<ScalarMath>(T(-1e4), T(1), g) == -g, ty + " sigmoid_pair_grad(-large, +1) == -g");
  check(sigmoid_pair_grad<ScalarMath>(T(1e4), T(-1), g) == g, ty + " sigmoid_pair_grad(+large, -1) == g");
  check(sigmoid_pair_grad<ScalarMath>(inf, T(1), g) == T(0) && sigmoid_pair_grad<ScalarMath>(-inf, T(1), g) == -g,
        ty + " sigmoid_pair_grad(+-inf)");
  check(std::isnan(sigmoid_pair_grad<ScalarMath>(nan, T(1), g)), ty + " sigmoid_pair_grad(NaN)");

  // softmax_logit_grad and lse_term.
  for (T x : {T(-3), T(0), T(2.5)}) {
    const T r = T(4), c = T(3.5), gr = T(0.3), gc = T(-0.2);
    const long double want = gr * std::exp((long double)x - r) + gc * std::exp((long double)x - c);
    const long double got = softmax_logit_grad<ScalarMath>(x, r, c, gr, gc);
    check(close(got, want, 8 * eps<T>(), 8 * eps<T>()), fmt((ty + " softmax_logit_grad").c_str(), got, want));
    check(close(lse_term<ScalarMath>(x, r), std::exp((long double)x - r), 4 * eps<T>()), ty + " lse_term");
  }
  check(lse_term<ScalarMath>(-inf, T(1)) == T(0), ty + " lse_term(-inf)");
}

// ---- (b) the ops through the dispatcher ------------------------------------------------

using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;

const auto& op_softmax_forward() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pretrain_mm::softmax_forward", "")
                             .typed<Tensor3(const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t)>();
  return op;
}
const auto& op_softmax_backward() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pretrain_mm::softmax_backward", "")
                             .typed<Tensor3(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                            const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t)>();
  return op;
}
const auto& op_sigmoid_forward() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pretrain_mm::sigmoid_forward", "")
          .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t)>();
  return op;
}
const auto& op_sigmoid_backward() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pretrain_mm::sigmoid_backward", "")
                             .typed<Tensor4(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                            int64_t, int64_t)>();
  return op;
}

void expect_close(const Tensor& got, const Tensor& want, double rtol, double atol, const std::string& what) {
  ++checks;
  const bool ok = got.sizes() == want.sizes() && at::allclose(got.to(at::kDouble), want.to(at::kDouble), rtol, atol);
  if (!ok && ++failures <= 40) {
    const double err =
        got.sizes() == want.sizes() ? (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>() : -1.0;
    std::printf("FAIL %s: max |diff| %g (shapes %s vs %s)\n", what.c_str(), err, c10::str(got.sizes()).c_str(),
                c10::str(want.sizes()).c_str());
  }
}

// The positive pairs: row i with column offset + i.
Tensor positives(int64_t n, int64_t N, int64_t offset, const at::TensorOptions& opts) {
  Tensor z = at::full({n, N}, -1.0, opts);
  z.index_put_({at::arange(n), at::arange(n) + offset}, 1.0);
  return z;
}

void ops_case(int64_t n, int64_t N, int64_t D, int64_t offset, int64_t workspace, at::ScalarType dtype) {
  const std::string tag = "n=" + std::to_string(n) + " N=" + std::to_string(N) + " D=" + std::to_string(D) +
                          " offset=" + std::to_string(offset) + " ws=" + std::to_string(workspace) + " " +
                          c10::toString(dtype);
  const bool exact = dtype == at::kDouble;
  const double rtol = exact ? 1e-10 : 2e-4, atol = exact ? 1e-10 : 2e-4;
  at::manual_seed(n * 1000 + N + D);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const Tensor q64 = at::randn({n, D}, f64), k64 = at::randn({N, D}, f64);
  const Tensor s64 = at::full({}, 3.0, f64), b64 = at::full({}, -1.5, f64);
  const Tensor q = q64.to(dtype), k = k64.to(dtype), s = s64.to(dtype), b = b64.to(dtype);

  // Softmax: forward against logsumexp, backward against autograd of the same statistics.
  {
    Tensor qr = q.to(at::kDouble).clone().requires_grad_(), kr = k.to(at::kDouble).clone().requires_grad_();
    Tensor sr = s.to(at::kDouble).clone().requires_grad_();
    const Tensor L = sr * at::mm(qr, kr.t());
    const Tensor row_lse = at::logsumexp(L, {1}), col_lse = at::logsumexp(L, {0});
    const Tensor diag = L.gather(1, (at::arange(n) + offset).unsqueeze(1)).squeeze(1);
    auto [r, c, d] = op_softmax_forward().call(q, k, s, offset, workspace);
    expect_close(r, row_lse.detach(), rtol, atol, "softmax_forward row_lse " + tag);
    expect_close(c, col_lse.detach(), rtol, atol, "softmax_forward col_lse " + tag);
    expect_close(d, diag.detach(), rtol, atol, "softmax_forward diag " + tag);

    const Tensor g_row = at::randn({n}, f64), g_col = at::randn({N}, f64), g_diag = at::randn({n}, f64);
    ((row_lse * g_row).sum() + (col_lse * g_col).sum() + (diag * g_diag).sum()).backward();
    auto [dq, dk, ds] = op_softmax_backward().call(q, k, s, r, c, g_row.to(dtype), g_col.to(dtype), g_diag.to(dtype),
                                                   offset, workspace);
    expect_close(dq, qr.grad(), rtol, atol, "softmax_backward dq " + tag);
    expect_close(dk, kr.grad(), rtol, atol, "softmax_backward dk " + tag);
    expect_close(ds, sr.grad(), rtol, atol * n, "softmax_backward dscale " + tag);
  }
  // Sigmoid: forward against softplus(-z L) summed per row, backward against autograd.
  {
    Tensor qr = q.to(at::kDouble).clone().requires_grad_(), kr = k.to(at::kDouble).clone().requires_grad_();
    Tensor sr = s.to(at::kDouble).clone().requires_grad_(), br = b.to(at::kDouble).clone().requires_grad_();
    const Tensor L = sr * at::mm(qr, kr.t()) + br;
    // softplus, written out: at::softplus is linear past its threshold (20), which is off by
    // exp(-20) in value and gradient — more than float64 rounding.
    const Tensor t = -positives(n, N, offset, f64) * L;
    const Tensor row_loss = (at::relu(t) + at::log1p(at::exp(-t.abs()))).sum(1);
    const Tensor loss = op_sigmoid_forward().call(q, k, s, b, offset, workspace);
    expect_close(loss, row_loss.detach(), rtol, atol, "sigmoid_forward " + tag);

    const Tensor g_row = at::randn({n}, f64);
    (row_loss * g_row).sum().backward();
    auto [dq, dk, ds, db] = op_sigmoid_backward().call(q, k, s, b, g_row.to(dtype), offset, workspace);
    expect_close(dq, qr.grad(), rtol, atol, "sigmoid_backward dq " + tag);
    expect_close(dk, kr.grad(), rtol, atol, "sigmoid_backward dk " + tag);
    expect_close(ds, sr.grad(), rtol, atol * n, "sigmoid_backward dscale " + tag);
    expect_close(db, br.grad(), rtol, atol * n, "sigmoid_backward dbias " + tag);
  }
}

void ops() {
  for (at::ScalarType dt : {at::kDouble, at::kFloat}) {
    ops_case(1, 1, 1, 0, 1 << 20, dt);
    ops_case(5, 5, 3, 0, 1 << 20, dt);       // one panel
    ops_case(5, 5, 3, 0, 8, dt);             // 1 x 1 panels
    ops_case(3, 11, 4, 6, 64, dt);           // n < N, offset rows, narrow panels
    ops_case(37, 70, 16, 20, 4096, dt);      // several row and column panels
  }
  // Errors reach the caller as exceptions, not crashes.
  bool threw = false;
  try {
    op_softmax_forward().call(at::randn({3, 4}), at::randn({3, 5}), at::ones({}), 0, 1024);
  } catch (const std::exception&) {
    threw = true;
  }
  check(threw, "softmax_forward rejects mismatched feature dims");
  threw = false;
  try {
    op_softmax_forward().call(at::randn({3, 4}), at::randn({4, 4}), at::ones({}), 2, 1024);
  } catch (const std::exception&) {
    threw = true;
  }
  check(threw, "softmax_forward rejects rows that do not fit at the offset");
  const auto build_info =
      c10::Dispatcher::singleton().findSchemaOrThrow("pretrain_mm::build_info", "").typed<std::string()>().call();
  check(build_info.find("cpu=") != std::string::npos, "build_info: " + build_info);
  std::printf("build_info: %s\n", build_info.c_str());
}

}  // namespace

int main() {
  numerics<float>();
  numerics<double>();
  ops();
  if (failures) {
    std::printf("%d of %d checks failed\n", failures, checks);
    return 1;
  }
  std::printf("all %d checks passed\n", checks);
  return 0;
}
