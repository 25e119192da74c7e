// The CUDA panel kernels, run on the CPU emulation (cuda_emulation.h), against the CPU panel
// kernels: same panels, same running state, same results — to rounding, and exactly for
// NaN / infinity placement. Covers warp- and block-per-row reductions, the vector and scalar
// load paths (aligned / misaligned panels, odd leading dimensions), tails of every loop,
// the diagonal inside and outside the panel, grid-stride loops over many work items, and
// NaN / +inf / -inf logits. Never touches a GPU.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "panel.h"

namespace pretrain_mm::cuda_emulated {
template <typename T> void softmax_forward_panel(const Panel<T>&, const SoftmaxForwardState<T>&, void*);
template <typename T> void softmax_backward_panel(const Panel<T>&, const SoftmaxBackwardState<T>&, void*);
template <typename T> void sigmoid_forward_panel(const Panel<T>&, const SigmoidForwardState<T>&, void*);
template <typename T> void sigmoid_backward_panel(const Panel<T>&, const SigmoidBackwardState<T>&, void*);
}  // namespace pretrain_mm::cuda_emulated

namespace {

using namespace pretrain_mm;
namespace gpu = pretrain_mm::cuda_emulated;

int failures = 0;
int checks = 0;

enum Special { kNone, kNaN, kPosInf, kNegInfRow, kNegInfScattered };

struct Case {
  int64_t rows, cols, ld_extra, row0, col0, offset;
  bool misalign;  // panel pointer one element off 16-byte alignment
  Special special;
  double scale;
};

std::string describe(const Case& c) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "rows=%lld cols=%lld ld=+%lld row0=%lld col0=%lld offset=%lld misalign=%d special=%d s=%g",
                (long long)c.rows, (long long)c.cols, (long long)c.ld_extra, (long long)c.row0, (long long)c.col0,
                (long long)c.offset, int(c.misalign), int(c.special), c.scale);
  return buf;
}

// NaN matches NaN, an infinity the same infinity, finite values to atol + rtol * |want|.
bool close(long double got, long double want, double rtol, long double atol) {
  if (std::isnan(got) || std::isnan(want)) return std::isnan(got) && std::isnan(want);
  if (std::isinf(got) || std::isinf(want)) return got == want;
  return std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

template <typename T>
void expect(const char* what, const Case& c, int64_t index, long double got, long double want, double rtol,
            long double atol = 0) {
  ++checks;
  if (close(got, want, rtol, atol)) return;
  if (++failures <= 30)
    std::printf("FAIL %s %s [%lld]: emulated CUDA %.17Lg vs CPU %.17Lg (%s)\n", what, sizeof(T) == 4 ? "f32" : "f64",
                (long long)index, got, want, describe(c).c_str());
}

template <typename T>
struct Rig {
  Case c;
  int64_t ld, n, N;
  std::vector<T> storage;  // panel with a misalignment slack and guard values in the ld padding
  T* p = nullptr;
  T scale, bias;
  std::mt19937_64 rng;

  explicit Rig(const Case& cs) : c(cs), rng(1234 + cs.rows * 7919 + cs.cols * 31 + cs.special) {
    ld = c.cols + c.ld_extra;
    n = c.row0 + c.rows + 2;
    N = std::max<int64_t>(c.col0 + c.cols + 3, c.offset + n);
    storage.assign(c.rows * ld + 8, T(0));
    p = storage.data() + (c.misalign ? 1 : 0);
    std::normal_distribution<double> normal(0.0, 2.0);
    for (int64_t i = 0; i < c.rows; ++i)
      for (int64_t j = 0; j < ld; ++j) p[i * ld + j] = j < c.cols ? T(normal(rng)) : T(1e4);  // guards
    auto at = [&](int64_t i, int64_t j) -> T& { return p[(i % c.rows) * ld + (j % c.cols)]; };
    const T inf = std::numeric_limits<T>::infinity();
    switch (c.special) {
      case kNaN: at(c.rows / 2, c.cols / 3) = std::numeric_limits<T>::quiet_NaN(); break;
      case kPosInf:
        at(c.rows - 1, c.cols - 1) = inf;
        at(0, c.cols / 2) = inf;
        break;
      case kNegInfRow:
        for (int64_t j = 0; j < c.cols; ++j) at(c.rows / 2, j) = -inf;
        break;
      case kNegInfScattered:
        for (int64_t k = 0; k < c.rows * c.cols; k += 3) at(k / c.cols, k % c.cols) = -inf;
        break;
      default: break;
    }
    scale = T(c.scale);
    bias = T(-2.5);
  }

  Panel<T> panel(T* data) const { return {data, c.rows, c.cols, ld, c.row0, c.col0, c.offset, &scale, &bias}; }
  Panel<T> panel_no_bias(T* data) const {
    return {data, c.rows, c.cols, ld, c.row0, c.col0, c.offset, &scale, nullptr};
  }

  std::vector<T> copy_storage() const { return storage; }
  T* panel_in(std::vector<T>& s) const { return s.data() + (c.misalign ? 1 : 0); }

  std::vector<T> random(int64_t len, double lo, double hi) {
    std::uniform_real_distribution<double> u(lo, hi);
    std::vector<T> v(len);
    for (auto& x : v) x = T(u(rng));
    return v;
  }

  // Running (max, sum) pairs: a mix of empty ones and earlier partials.
  void running_pairs(int64_t len, std::vector<T>& m, std::vector<T>& s) {
    m = random(len, -3, 6);
    s = random(len, 0.5, 20);
    for (int64_t i = 0; i < len; i += 3) {
      m[i] = -std::numeric_limits<T>::infinity();
      s[i] = T(0);
    }
  }

  void check_guards(const char* what, std::vector<T>& s) {
    T* q = panel_in(s);
    for (int64_t i = 0; i < c.rows; ++i)
      for (int64_t j = c.cols; j < ld; ++j) expect<T>(what, c, i * ld + j, q[i * ld + j], T(1e4), 0);
  }
};

template <typename T>
long double lse(T m, T s) {
  return static_cast<long double>(m) + std::log(static_cast<long double>(s));
}

template <typename T>
double rtol() {
  return sizeof(T) == 4 ? 2e-5 : 1e-12;
}

template <typename T>
void softmax_forward(const Case& c) {
  Rig<T> rig(c);
  std::vector<T> rm, rs, cm, cs;
  rig.running_pairs(rig.n, rm, rs);
  rig.running_pairs(rig.N, cm, cs);
  std::vector<T> diag(rig.n, T(777));
  auto rm2 = rm, rs2 = rs, cm2 = cm, cs2 = cs, diag2 = diag;
  auto mem_cpu = rig.copy_storage(), mem_gpu = rig.copy_storage();
  cpu::kernels<T>().softmax_forward(rig.panel_no_bias(rig.panel_in(mem_cpu)),
                                    {rm.data(), rs.data(), cm.data(), cs.data(), diag.data()});
  gpu::softmax_forward_panel<T>(rig.panel_no_bias(rig.panel_in(mem_gpu)),
                                {rm2.data(), rs2.data(), cm2.data(), cs2.data(), diag2.data()}, nullptr);
  for (int64_t i = 0; i < rig.n; ++i) {
    expect<T>("softmax_forward row_lse", c, i, lse(rm2[i], rs2[i]), lse(rm[i], rs[i]), rtol<T>(), rtol<T>());
    expect<T>("softmax_forward diag", c, i, diag2[i], diag[i], 0);
  }
  for (int64_t j = 0; j < rig.N; ++j)
    expect<T>("softmax_forward col_lse", c, j, lse(cm2[j], cs2[j]), lse(cm[j], cs[j]), rtol<T>(), rtol<T>());
  for (size_t k = 0; k < mem_gpu.size(); ++k)
    expect<T>("softmax_forward panel unchanged", c, int64_t(k), mem_gpu[k], rig.storage[k], 0);
}

template <typename T>
void softmax_backward(const Case& c) {
  Rig<T> rig(c);
  // Plausible statistics: lse above the logits so exp(x - lse) stays moderate.
  const auto row_lse = rig.random(rig.n, 4, 9), col_lse = rig.random(rig.N, 4, 9);
  const auto g_row = rig.random(rig.n, -1, 1), g_col = rig.random(rig.N, -1, 1), g_diag = rig.random(rig.n, -1, 1);
  T ds_cpu = T(0.25), ds_gpu = T(0.25);
  auto mem_cpu = rig.copy_storage(), mem_gpu = rig.copy_storage();
  cpu::kernels<T>().softmax_backward(
      rig.panel_no_bias(rig.panel_in(mem_cpu)),
      {row_lse.data(), col_lse.data(), g_row.data(), g_col.data(), g_diag.data(), &ds_cpu});
  gpu::softmax_backward_panel<T>(rig.panel_no_bias(rig.panel_in(mem_gpu)),
                                 {row_lse.data(), col_lse.data(), g_row.data(), g_col.data(), g_diag.data(), &ds_gpu},
                                 nullptr);
  const T* out_cpu = rig.panel_in(mem_cpu);
  const T* out_gpu = rig.panel_in(mem_gpu);
  long double magnitude = 0;  // sum |G p|: the scale of the rounding in dscale
  for (int64_t i = 0; i < c.rows; ++i)
    for (int64_t j = 0; j < c.cols; ++j) {
      const int64_t k = i * rig.ld + j;
      expect<T>("softmax_backward panel", c, k, out_gpu[k], out_cpu[k], rtol<T>(), rtol<T>() * 1e-3);
      if (std::isfinite(out_cpu[k] * rig.p[k])) magnitude += std::fabs((long double)out_cpu[k] * rig.p[k] / rig.scale);
    }
  rig.check_guards("softmax_backward guard", mem_gpu);
  expect<T>("softmax_backward dscale", c, 0, ds_gpu, ds_cpu, rtol<T>(), 4 * rtol<T>() * (magnitude + 1));
}

template <typename T>
void sigmoid_forward(const Case& c) {
  Rig<T> rig(c);
  auto loss_cpu = rig.random(rig.n, 0, 3), loss_gpu = loss_cpu;
  auto mem_gpu = rig.copy_storage(), mem_cpu = rig.copy_storage();
  cpu::kernels<T>().sigmoid_forward(rig.panel(rig.panel_in(mem_cpu)), {loss_cpu.data()});
  gpu::sigmoid_forward_panel<T>(rig.panel(rig.panel_in(mem_gpu)), {loss_gpu.data()}, nullptr);
  for (int64_t i = 0; i < rig.n; ++i)
    expect<T>("sigmoid_forward row_loss", c, i, loss_gpu[i], loss_cpu[i], rtol<T>(), rtol<T>());
  for (size_t k = 0; k < mem_gpu.size(); ++k)
    expect<T>("sigmoid_forward panel unchanged", c, int64_t(k), mem_gpu[k], rig.storage[k], 0);
}

template <typename T>
void sigmoid_backward(const Case& c) {
  Rig<T> rig(c);
  const auto g_row = rig.random(rig.n, -1, 1);
  T ds_cpu = T(0.5), ds_gpu = T(0.5), db_cpu = T(-0.5), db_gpu = T(-0.5);
  auto mem_cpu = rig.copy_storage(), mem_gpu = rig.copy_storage();
  cpu::kernels<T>().sigmoid_backward(rig.panel(rig.panel_in(mem_cpu)), {g_row.data(), &ds_cpu, &db_cpu});
  gpu::sigmoid_backward_panel<T>(rig.panel(rig.panel_in(mem_gpu)), {g_row.data(), &ds_gpu, &db_gpu}, nullptr);
  const T* out_cpu = rig.panel_in(mem_cpu);
  const T* out_gpu = rig.panel_in(mem_gpu);
  long double mag_scale = 0, mag_bias = 0;
  for (int64_t i = 0; i < c.rows; ++i)
    for (int64_t j = 0; j < c.cols; ++j) {
      const int64_t k = i * rig.ld + j;
      expect<T>("sigmoid_backward panel", c, k, out_gpu[k], out_cpu[k], rtol<T>(), rtol<T>() * 1e-3);
      const long double dl = (long double)out_cpu[k] / rig.scale;
      if (std::isfinite(dl * rig.p[k])) mag_scale += std::fabs(dl * rig.p[k]);
      if (std::isfinite(dl)) mag_bias += std::fabs(dl);
    }
  rig.check_guards("sigmoid_backward guard", mem_gpu);
  expect<T>("sigmoid_backward dscale", c, 0, ds_gpu, ds_cpu, rtol<T>(), 4 * rtol<T>() * (mag_scale + 1));
  expect<T>("sigmoid_backward dbias", c, 0, db_gpu, db_cpu, rtol<T>(), 4 * rtol<T>() * (mag_bias + 1));
}

template <typename T>
void run_all(const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    softmax_forward<T>(c);
    softmax_backward<T>(c);
    sigmoid_forward<T>(c);
    sigmoid_backward<T>(c);
  }
}

}  // namespace

int main() {
  std::vector<Case> cases = {
      // rows cols ld+ row0 col0 offset misalign special scale
      {1, 1, 0, 0, 0, 0, false, kNone, 1.5},             // a single logit, on the diagonal
      {3, 5, 0, 2, 0, 0, false, kNone, 2.0},             // diagonal at columns 2..4
      {7, 33, 1, 0, 30, 28, false, kNone, 3.0},          // odd ld: scalar loads; diagonal partly inside
      {17, 70, 2, 5, 8, 0, false, kNone, 0.7},           // diagonal outside the panel (d < 0 for early rows)
      {9, 40, 0, 0, 0, 100, true, kNone, 1.0},           // misaligned panel; diagonal beyond the panel
      {13, 1024, 0, 4, 0, 3, false, kNone, 4.0},         // first block-per-row size, vector loads
      {5, 1029, 3, 0, 1, 0, false, kNone, 2.5},          // block per row, ragged tail, scalar loads
      {6, 4100, 0, 0, 4, 2, false, kNone, 1.3},          // more than one backward chunk per row, vector
      {3, 4101, 0, 1, 2, 7, true, kNone, 1.1},           // the same misaligned, odd cols
      {40, 64, 0, 0, 0, 0, false, kNone, 10.0},          // many rows: grid-stride work items
      {12, 50, 2, 0, 0, 0, false, kNaN, 2.0},            // NaN propagates (warp per row)
      {4, 2000, 0, 0, 0, 0, false, kNaN, 2.0},           // NaN propagates (block per row)
      {10, 37, 3, 0, 0, 0, false, kPosInf, 1.0},         // +inf logits
      {6, 1500, 0, 0, 0, 0, false, kPosInf, 1.0},
      {9, 45, 3, 0, 0, 0, false, kNegInfRow, 1.0},       // a row of -inf leaves its running pair alone
      {5, 1100, 0, 0, 0, 0, false, kNegInfRow, 1.0},
      {11, 60, 4, 0, 0, 0, false, kNegInfScattered, 2.0},
      {8, 300, 0, 3, 0, 0, false, kNone, -1.5},          // negative scale
  };
  run_all<float>(cases);
  run_all<double>(cases);
  if (failures) {
    std::printf("%d of %d checks failed\n", failures, checks);
    return 1;
  }
  std::printf("emulated CUDA panel kernels match the CPU panel kernels: %d checks\n", checks);
  return 0;
}
