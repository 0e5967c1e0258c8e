// pybind11 module llp_kernels._C. It links no libtorch: every tensor arrives as a raw
// data pointer (uintptr_t) plus sizes and a dtype code, already validated by the
// Python layer (llp_kernels/_extension.py and the backends). Kernels release the GIL.
#include <pybind11/pybind11.h>
#include <thread>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dtype.h"
#include "cpu/kernels.h"
#ifdef LLP_WITH_CUDA
#include "cuda/kernels.h"
#include "cuda/slices.h"
#endif

namespace py = pybind11;

namespace {

template <typename T> T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }
template <typename T> T* ptr_or_null(uintptr_t p) { return p ? reinterpret_cast<T*>(p) : nullptr; }

int threads_or_default(int threads) {
  return threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "llp_kernels compiled kernels (CPU always, CUDA when built with nvcc)";

  // Hooks for the tests only, kept apart from the kernels' entry points.
  py::module_ testing = m.def_submodule("testing", "test hooks: not part of any backend");

  // Element-wise dtype conversion through the kernels' own scalar converters; the tests
  // compare it with torch over every bf16/fp16 bit pattern.
  testing.def("convert", [](uintptr_t src, int src_dtype, uintptr_t dst, int dst_dtype, int64_t n) {
    if (src_dtype < 0 || src_dtype > 2 || dst_dtype < 0 || dst_dtype > 2)
      throw std::invalid_argument("convert: dtype code must be 0, 1 or 2");
    py::gil_scoped_release nogil;
    for (int64_t i = 0; i < n; ++i) {
      float v = src_dtype == llp::kFloat32    ? ptr<const float>(src)[i]
                : src_dtype == llp::kBFloat16 ? llp::bf16_to_f32(ptr<const uint16_t>(src)[i])
                                              : llp::f16_to_f32(ptr<const uint16_t>(src)[i]);
      if (dst_dtype == llp::kFloat32) ptr<float>(dst)[i] = v;
      else if (dst_dtype == llp::kBFloat16) ptr<uint16_t>(dst)[i] = llp::f32_to_bf16(v);
      else ptr<uint16_t>(dst)[i] = llp::f32_to_f16(v);
    }
  });

  m.def("cpu_lse_tile_update",
        [](uintptr_t dots, int64_t B, int64_t n, int64_t ld, uintptr_t bank_labels,
           uintptr_t query_labels, float inv_tau, uintptr_t m_all, uintptr_t s_all,
           uintptr_t m_same, uintptr_t s_same, int threads) {
          py::gil_scoped_release nogil;
          llp::cpu::lse_tile_update(ptr<const float>(dots), B, n, ld, ptr<const int64_t>(bank_labels),
                                    ptr<const int64_t>(query_labels), inv_tau, ptr<float>(m_all),
                                    ptr<float>(s_all), ptr<float>(m_same), ptr<float>(s_same),
                                    threads_or_default(threads));
        });

  m.def("cpu_lse_grad_tile",
        [](uintptr_t dots, int64_t B, int64_t n, int64_t ld, uintptr_t bank_labels,
           uintptr_t query_labels, float inv_tau, uintptr_t lse_all, uintptr_t lse_same,
           uintptr_t scale, int threads) {
          py::gil_scoped_release nogil;
          llp::cpu::lse_grad_tile(ptr<float>(dots), B, n, ld, ptr<const int64_t>(bank_labels),
                                  ptr<const int64_t>(query_labels), inv_tau, ptr<const float>(lse_all),
                                  ptr<const float>(lse_same), ptr<const float>(scale),
                                  threads_or_default(threads));
        });

  m.def("cpu_topk_tile_update",
        [](uintptr_t dots, int64_t Q, int64_t n, int64_t ld, uintptr_t bias, float inv_tau,
           int64_t offset, int64_t k, uintptr_t heap_vals, uintptr_t heap_idx, int threads) {
          py::gil_scoped_release nogil;
          llp::cpu::topk_tile_update(ptr<const float>(dots), Q, n, ld, ptr_or_null<const float>(bias),
                                     inv_tau, offset, k, ptr<float>(heap_vals), ptr<int64_t>(heap_idx),
                                     threads_or_default(threads));
        });

  m.def("cpu_topk_fused_isa", &llp::cpu::topk_fused_isa);

  m.def("cpu_topk_fused",
        [](uintptr_t queries, int64_t Q, uintptr_t keys, int key_dtype, int64_t N, int64_t D,
           uintptr_t bias, float inv_tau, int64_t k, uintptr_t heap_vals, uintptr_t heap_idx,
           int isa, int threads) {
          if (isa < llp::cpu::kIsaAvx2 || isa > llp::cpu::topk_fused_isa())
            throw py::value_error("cpu_topk_fused: isa " + std::to_string(isa) + " is not available here");
          py::gil_scoped_release nogil;
          llp::cpu::topk_fused(ptr<const float>(queries), Q, ptr<const void>(keys), key_dtype, N, D,
                               ptr_or_null<const float>(bias), inv_tau, k, ptr<float>(heap_vals),
                               ptr<int64_t>(heap_idx), isa, threads_or_default(threads));
        });

  m.def("cpu_topk_finalize",
        [](uintptr_t heap_vals, uintptr_t heap_idx, int64_t Q, int64_t k, int threads) {
          py::gil_scoped_release nogil;
          llp::cpu::topk_finalize(ptr<float>(heap_vals), ptr<int64_t>(heap_idx), Q, k,
                                  threads_or_default(threads));
        });

  m.def("cpu_bank_update",
        [](uintptr_t bank, int bank_dtype, int64_t N, int64_t D, uintptr_t idx, uintptr_t emb,
           int emb_dtype, int64_t B, float momentum, int threads) {
          int64_t rc;
          {
            py::gil_scoped_release nogil;
            rc = llp::cpu::bank_update(ptr<void>(bank), bank_dtype, N, D, ptr<const int64_t>(idx),
                                       ptr<const void>(emb), emb_dtype, B, momentum,
                                       threads_or_default(threads));
          }
          if (rc == -2) throw std::invalid_argument("cpu_bank_update: unsupported dtype code");
          if (rc >= 0)
            throw std::out_of_range("cpu_bank_update: index at position " + std::to_string(rc) +
                                    " is outside [0, N)");
        });

#ifdef LLP_WITH_CUDA
  m.attr("cuda_compiled") = true;
  m.attr("cuda_archs") = LLP_CUDA_ARCHS;
  m.attr("cuda_max_dim") = llp::cuda::kMaxDim;
  m.attr("cuda_max_kept") = llp::cuda::kMaxKept;
  m.def("cuda_device_count", []() {
    std::string why;
    const int n = llp::cuda::device_count(&why);
    return py::make_tuple(n, why);
  });
  m.def("cuda_bank_update",
        [](uintptr_t bank, int bank_dtype, int64_t N, int64_t D, uintptr_t idx, uintptr_t emb,
           int emb_dtype, int64_t B, float momentum, int device, uintptr_t stream) {
          std::string err;
          {
            py::gil_scoped_release nogil;
            err = llp::cuda::bank_update(ptr<void>(bank), bank_dtype, N, D, ptr<const int64_t>(idx),
                                         ptr<const void>(emb), emb_dtype, B, momentum, device,
                                         reinterpret_cast<void*>(stream));
          }
          if (!err.empty()) throw std::runtime_error(err);
        });
  testing.def("cuda_slice_rows", [](int64_t row_blocks, int64_t N, int64_t bn, int64_t min_tiles, int sms) {
    const auto s = llp::cuda::tiles::slice_rows(row_blocks, N, bn, min_tiles, sms);
    return py::make_tuple(s.count, s.rows);
  }, "The split-N planner on its own (for tests): (slices, rows per slice).");
  testing.def("cuda_shared_bytes", [](const std::string& kernel, int dtype, int64_t D, int kp) -> int64_t {
    if (kernel == "aggregation") return llp::cuda::aggregation_shared_bytes(dtype, D);
    if (kernel == "topk") return llp::cuda::topk_shared_bytes(kp, dtype, D);
    throw py::value_error("kernel must be 'aggregation' or 'topk', got " + kernel);
  }, "Dynamic shared memory of one block of a CUDA kernel (bytes): kernel, dtype code, D, kept size.");
  m.def("cuda_aggregation_plan", [](int64_t B, int64_t N, int64_t D, int bank_dtype, bool backward_pass, int device) {
    const auto plan = llp::cuda::aggregation_plan(B, N, D, bank_dtype, backward_pass, device);
    return py::make_tuple(plan.splits, plan.n_per_split, plan.rows_padded, plan.dim_padded);
  });
  m.def("cuda_aggregation_forward",
        [](uintptr_t q, uintptr_t bank, int bank_dtype, uintptr_t bank_labels, uintptr_t query_labels,
           uintptr_t parts, int64_t B, int64_t N, int64_t D, int64_t splits, int64_t n_per_split,
           float inv_tau, bool exact_fp32, int device, uintptr_t stream) {
          std::string err;
          {
            py::gil_scoped_release nogil;
            err = llp::cuda::aggregation_forward(
                ptr<const void>(q), ptr<const void>(bank), bank_dtype, ptr<const int64_t>(bank_labels),
                ptr<const int64_t>(query_labels), ptr<float>(parts), B, N, D, splits, n_per_split, inv_tau,
                exact_fp32, device, reinterpret_cast<void*>(stream));
          }
          if (!err.empty()) throw std::runtime_error(err);
        });
  m.def("cuda_aggregation_backward",
        [](uintptr_t q, uintptr_t bank, int bank_dtype, uintptr_t bank_labels, uintptr_t query_labels,
           uintptr_t lse_all, uintptr_t lse_same, uintptr_t coef, uintptr_t parts, int64_t B, int64_t N,
           int64_t D, int64_t splits, int64_t n_per_split, float inv_tau, bool exact_fp32, int device,
           uintptr_t stream) {
          std::string err;
          {
            py::gil_scoped_release nogil;
            err = llp::cuda::aggregation_backward(
                ptr<const void>(q), ptr<const void>(bank), bank_dtype, ptr<const int64_t>(bank_labels),
                ptr<const int64_t>(query_labels), ptr<const float>(lse_all), ptr<const float>(lse_same),
                ptr<const float>(coef), ptr<float>(parts), B, N, D, splits, n_per_split, inv_tau, exact_fp32,
                device, reinterpret_cast<void*>(stream));
          }
          if (!err.empty()) throw std::runtime_error(err);
        });
  m.def("cuda_topk_plan", [](int64_t Q, int64_t N, int kp, int key_dtype, int device) {
    const auto plan = llp::cuda::topk_plan(Q, N, kp, key_dtype, device);
    return py::make_tuple(plan.splits, plan.n_per_split);
  });
  m.def("cuda_topk",
        [](uintptr_t q, uintptr_t keys, int key_dtype, uintptr_t bias, uintptr_t out, int64_t Q, int64_t N,
           int64_t D, int kp, int64_t splits, int64_t n_per_split, float inv_tau, bool exact_fp32, int device,
           uintptr_t stream) {
          std::string err;
          {
            py::gil_scoped_release nogil;
            err = llp::cuda::topk(ptr<const void>(q), ptr<const void>(keys), key_dtype, ptr_or_null<const float>(bias),
                                  ptr<int64_t>(out), Q, N, D, kp, splits, n_per_split, inv_tau, exact_fp32, device,
                                  reinterpret_cast<void*>(stream));
          }
          if (!err.empty()) throw std::runtime_error(err);
        });
#else
  m.attr("cuda_compiled") = false;
  m.attr("cuda_archs") = "";
#endif
}
