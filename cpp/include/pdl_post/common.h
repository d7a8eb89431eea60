// Shared types of the pdl_post core: strided array views, dtype tags and the HOST_DEVICE macro.
//
// The core never sees Python objects. Every input arrives as a StridedView: a pointer, a dtype tag,
// a 4-D shape [B, C, H, W] and strides counted in elements (any sign), so numpy/torch views of any
// layout are read in place. Per-pixel math that the CUDA path shares is marked PDL_HOST_DEVICE.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define PDL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PDL_HOST_DEVICE inline
#endif

namespace pdl_post {

enum class DType { kUInt8, kInt16, kInt32, kInt64, kFloat32, kFloat64 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kUInt8:
      return "uint8";
    case DType::kInt16:
      return "int16";
    case DType::kInt32:
      return "int32";
    case DType::kInt64:
      return "int64";
    case DType::kFloat32:
      return "float32";
    case DType::kFloat64:
      return "float64";
  }
  return "unknown";
}

inline int64_t dtype_size(DType t) {
  switch (t) {
    case DType::kUInt8:
      return 1;
    case DType::kInt16:
      return 2;
    case DType::kInt32:
      return 4;
    case DType::kFloat32:
      return 4;
    case DType::kInt64:
      return 8;
    case DType::kFloat64:
      return 8;
  }
  return 0;
}

// Index of the first element of sorted[0, size) that is not less than value (std::lower_bound,
// callable in kernels): the class and thing-id lookups of the CPU and CUDA paths.
PDL_HOST_DEVICE int64_t lower_bound_index(const int64_t* sorted, int64_t size, int64_t value) {
  int64_t lo = 0, hi = size;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sorted[mid] < value) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// A 4-D strided view [B, C, H, W]; strides in elements.
struct StridedView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  std::array<int64_t, 4> shape{0, 0, 0, 0};
  std::array<int64_t, 4> strides{0, 0, 0, 0};

  int64_t batch() const { return shape[0]; }
  int64_t channels() const { return shape[1]; }
  int64_t height() const { return shape[2]; }
  int64_t width() const { return shape[3]; }

  // The view of image b alone (shape [1, C, H, W]); a null view stays null.
  StridedView image(int64_t b) const {
    StridedView v = *this;
    if (data != nullptr) {
      v.data = static_cast<char*>(data) + b * strides[0] * dtype_size(dtype);
      v.shape[0] = 1;
    }
    return v;
  }
};

// One H x W plane of a typed array, read through its strides.
template <typename T>
struct Plane {
  T* data;
  int64_t stride_y;
  int64_t stride_x;
  PDL_HOST_DEVICE T& operator()(int64_t y, int64_t x) const {
    return data[y * stride_y + x * stride_x];
  }
  PDL_HOST_DEVICE T* row(int64_t y) const { return data + y * stride_y; }
};

template <typename T>
Plane<T> plane_of(const StridedView& v, int64_t b, int64_t c) {
  T* base = static_cast<T*>(v.data) + b * v.strides[0] + c * v.strides[1];
  return Plane<T>{base, v.strides[2], v.strides[3]};
}

// Errors the Python layer turns into ValueError (std::invalid_argument maps to ValueError).
struct ValueError : std::invalid_argument {
  explicit ValueError(const std::string& what) : std::invalid_argument(what) {}
};

// dtype dispatch: f(T{}) with the C++ type of a label, float or output dtype tag; anything else
// is a ValueError naming `what`. Shared by the CPU and CUDA drivers.
template <typename F>
decltype(auto) with_label_type(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::kUInt8:
      return f(uint8_t{});
    case DType::kInt16:
      return f(int16_t{});
    case DType::kInt32:
      return f(int32_t{});
    case DType::kInt64:
      return f(int64_t{});
    default:
      throw ValueError(std::string(what) + ": expected uint8, int16, int32 or int64 labels, got " +
                       dtype_name(t));
  }
}

template <typename F>
decltype(auto) with_float_type(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::kFloat32:
      return f(float{});
    case DType::kFloat64:
      return f(double{});
    default:
      throw ValueError(std::string(what) + ": expected float32 or float64, got " + dtype_name(t));
  }
}

template <typename F>
decltype(auto) with_output_type(DType t, F&& f) {
  switch (t) {
    case DType::kInt32:
      return f(int32_t{});
    case DType::kInt64:
      return f(int64_t{});
    default:
      throw ValueError(std::string("out: expected int32 or int64, got ") + dtype_name(t));
  }
}

// Threads for a loop over `height` rows: the request, at least 1 and at most one per row.
inline int row_threads(int num_threads, int64_t height) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, height)));
}

// Row strips for dynamic scheduling: a few per thread (work clusters in some rows), one when
// single-threaded, never more than the rows.
inline int64_t row_strips(int64_t height, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>(height, threads > 1 ? 4 * threads : 1));
}

// Thread count actually used: 1 without OpenMP, or in a child of fork() whose OpenMP threads
// could not be released before the fork (pipeline_cpu.cpp), else the request (<= 0 means
// OpenMP's default).
int resolve_threads(int requested);
bool openmp_enabled();
bool single_threaded_after_fork();
// Tests: whether the forking thread's OpenMP threads are released before fork() (default true);
// returns the previous setting.
bool set_release_pool_at_fork(bool release);

}  // namespace pdl_post
