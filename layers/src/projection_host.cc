// Host projections of the MHA layer (projection.h): plain loops, every product summed in double, each
// result rounded once to its tensor's dtype. The reference and the CPU fallback; not tuned.
#include <algorithm>
#include <vector>

#include "distattn/core/error.h"
#include "projection.h"

namespace distattn {
namespace layers {
namespace detail {
namespace {

// Row r of batch b of m, converted to double.
void load_row(const Mat& m, int64_t b, int64_t r, std::vector<double>& out) {
  out.resize(static_cast<size_t>(m.cols));
  const int64_t base = b * m.batch_stride + r * m.row_stride;
  for (int64_t c = 0; c < m.cols; ++c) out[static_cast<size_t>(c)] = load_as_double(m.data, base + c, m.dtype);
}

// A packed [rows, cols] buffer of dtype `t` as doubles.
std::vector<double> load_packed(const void* data, DType t, int64_t n) {
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = load_as_double(data, i, t);
  return out;
}

class HostProjector : public Projector {
 public:
  explicit HostProjector(DType grad_dtype) : grad_dtype_(grad_dtype) {}

  void linear(const Mat& in, const void* weight, const void* bias, const Mat& out) override {
    const int64_t n_in = in.cols, n_out = out.cols;
    const std::vector<double> w = load_packed(weight, in.dtype, n_out * n_in);  // [n_out, n_in]
    const std::vector<double> bv = bias ? load_packed(bias, in.dtype, n_out) : std::vector<double>();
    std::vector<double> x;
    for (int64_t b = 0; b < in.batch; ++b) {
      for (int64_t r = 0; r < in.rows; ++r) {
        load_row(in, b, r, x);
        const int64_t base = b * out.batch_stride + r * out.row_stride;
        for (int64_t n = 0; n < n_out; ++n) {
          const double* wn = &w[static_cast<size_t>(n * n_in)];
          double acc = bias ? bv[static_cast<size_t>(n)] : 0.0;
          for (int64_t k = 0; k < n_in; ++k) acc += x[static_cast<size_t>(k)] * wn[k];
          store_from_double(out.data, base + n, out.dtype, acc);
        }
      }
    }
  }

  void linear_input_grad(const Mat& dout, const void* weight, const Mat& din) override {
    const int64_t n_out = dout.cols, n_in = din.cols;
    const std::vector<double> w = load_packed(weight, dout.dtype, n_out * n_in);
    std::vector<double> g, acc(static_cast<size_t>(n_in));
    for (int64_t b = 0; b < dout.batch; ++b) {
      for (int64_t r = 0; r < dout.rows; ++r) {
        load_row(dout, b, r, g);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t n = 0; n < n_out; ++n) {
          const double gn = g[static_cast<size_t>(n)];
          const double* wn = &w[static_cast<size_t>(n * n_in)];
          for (int64_t k = 0; k < n_in; ++k) acc[static_cast<size_t>(k)] += gn * wn[k];
        }
        const int64_t base = b * din.batch_stride + r * din.row_stride;
        for (int64_t k = 0; k < n_in; ++k)
          store_from_double(din.data, base + k, din.dtype, acc[static_cast<size_t>(k)]);
      }
    }
  }

  void linear_weight_grad(const Mat& dout, const Mat& in, void* dweight, void* dbias) override {
    const int64_t n_out = dout.cols, n_in = in.cols;
    std::vector<double> dw(static_cast<size_t>(n_out * n_in), 0.0), db(static_cast<size_t>(n_out), 0.0);
    std::vector<double> g, x;
    for (int64_t b = 0; b < dout.batch; ++b) {
      for (int64_t r = 0; r < dout.rows; ++r) {
        load_row(dout, b, r, g);
        load_row(in, b, r, x);
        for (int64_t n = 0; n < n_out; ++n) {
          const double gn = g[static_cast<size_t>(n)];
          db[static_cast<size_t>(n)] += gn;
          double* row = &dw[static_cast<size_t>(n * n_in)];
          for (int64_t k = 0; k < n_in; ++k) row[k] += gn * x[static_cast<size_t>(k)];
        }
      }
    }
    for (int64_t i = 0; i < n_out * n_in; ++i) store_from_double(dweight, i, grad_dtype_, dw[static_cast<size_t>(i)]);
    if (dbias) {
      for (int64_t n = 0; n < n_out; ++n) store_from_double(dbias, n, grad_dtype_, db[static_cast<size_t>(n)]);
    }
  }

 private:
  DType grad_dtype_;
};

}  // namespace

std::unique_ptr<Projector> make_host_projector(DType grad_dtype) {
  DISTATTN_CHECK(grad_dtype == DType::kFloat32 || grad_dtype == DType::kFloat64, "host gradients are fp32 or fp64");
  return std::make_unique<HostProjector>(grad_dtype);
}

}  // namespace detail
}  // namespace layers
}  // namespace distattn
