// Stand-in for CuPy's cupy/float16.cuh: the float16 type CuPy names for numpy.float16 (stored as __half, converted
// implicitly from and to float, arithmetic in float), enough for kernels that write `(O)(float expression)`.
#pragma once

#include "cupy/carray.cuh"
#include <cuda_fp16.h>

class float16 {
private:
  __half data_;
public:
  __device__ float16() {}
  __device__ float16(float v) : data_(__float2half_rn(v)) {}
  explicit __device__ float16(bool v) : data_(__float2half_rn(float(v))) {}
  explicit __device__ float16(double v) : data_(__double2half(v)) {}
  explicit __device__ float16(int v) : data_(__float2half_rn(float(v))) {}
  explicit __device__ float16(long long v) : data_(__float2half_rn(float(v))) {}
  explicit __device__ float16(const __half& v) : data_(v) {}

  __device__ operator float() const { return __half2float(data_); }

  float16& operator=(const float16&) = default;
  template <typename T>
  __device__ float16& operator=(const T& rhs) {
    *this = static_cast<float16>(rhs);
    return *this;
  }
};

__device__ inline float16 operator+(const float16& a, const float16& b) { return float16(float(a) + float(b)); }
__device__ inline float16 operator-(const float16& a, const float16& b) { return float16(float(a) - float(b)); }
__device__ inline float16 operator*(const float16& a, const float16& b) { return float16(float(a) * float(b)); }
__device__ inline float16 operator/(const float16& a, const float16& b) { return float16(float(a) / float(b)); }
