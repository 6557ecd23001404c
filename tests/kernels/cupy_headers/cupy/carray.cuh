// Stand-in for CuPy's cupy/carray.cuh (CuPy 14): the CArray, CIndexer and CUPY_FOR interface that the sources
// CuPy generates for an ElementwiseKernel use, with the same template parameters, member signatures and indexing
// arithmetic. Used only to compile fusioncam's kernels on a machine without CuPy (tests/kernels/test_cuda_sources_compile.py);
// with CuPy installed the test compiles against CuPy's own headers.
#pragma once

class float16;

#define CUPY_FOR(i, n) \
    for (ptrdiff_t i = \
            static_cast<ptrdiff_t>(blockIdx.x) * blockDim.x + threadIdx.x; \
         i < (n); \
         i += static_cast<ptrdiff_t>(blockDim.x) * gridDim.x)

namespace cupy {
namespace type_traits {
template <bool B, class T, class F> struct conditional { typedef T type; };
template <class T, class F> struct conditional<false, T, F> { typedef F type; };
}  // namespace type_traits
}  // namespace cupy

template <typename T, int _ndim, bool _c_contiguous=false, bool _use_32bit_indexing=false>
class CArray {
public:
  static const int ndim = _ndim;
  static const bool c_contiguous = _c_contiguous;
  typedef typename cupy::type_traits::conditional<_use_32bit_indexing, int, ptrdiff_t>::type index_t;

private:
  T* data_;
  ptrdiff_t size_;
  ptrdiff_t shape_[ndim];
  ptrdiff_t strides_[ndim];

public:
  __device__ ptrdiff_t size() const { return size_; }
  __device__ const ptrdiff_t* shape() const { return shape_; }
  __device__ const ptrdiff_t* strides() const { return strides_; }
  __device__ T* data() const { return data_; }

  template <typename Int>
  __device__ T& operator[](const Int (&idx)[ndim]) {
    return const_cast<T&>(const_cast<const CArray&>(*this)[idx]);
  }

  template <typename Int>
  __device__ const T& operator[](const Int (&idx)[ndim]) const {
    index_t diff = 0;
    for (int dim = 0; dim < ndim; ++dim) {
      diff += static_cast<index_t>(strides_[dim]) * static_cast<index_t>(idx[dim]);
    }
    const char* ptr = reinterpret_cast<const char*>(data_);
    return *reinterpret_cast<const T*>(ptr + diff);
  }

  __device__ T& operator[](ptrdiff_t i) {
    return const_cast<T&>(const_cast<const CArray&>(*this)[i]);
  }

  __device__ const T& operator[](ptrdiff_t idx) const {
    if (c_contiguous) {
      return data_[idx];
    } else {
      index_t diff = 0;
      index_t i = static_cast<index_t>(idx);
      for (int dim = ndim; --dim > 0; ) {
        index_t shape_dim = static_cast<index_t>(shape_[dim]);
        diff += static_cast<index_t>(strides_[dim]) * (i % shape_dim);
        i /= shape_dim;
      }
      diff += static_cast<index_t>(strides_[0]) * i;
      const char* ptr = reinterpret_cast<const char*>(data_);
      return *reinterpret_cast<const T*>(ptr + diff);
    }
  }
};

template <int _ndim, bool _use_32bit_indexing=false>
class CIndexer {
public:
  static const int ndim = _ndim;
private:
  ptrdiff_t size_;
  ptrdiff_t shape_[ndim];
  ptrdiff_t index_[ndim];
  typedef ptrdiff_t index_t[ndim];

  template <typename T>
  __device__ void _set(T i) {
    T a = i;
    for (int dim = ndim; --dim > 0; ) {
      T s = static_cast<T>(shape_[dim]);
      if (s & (s - 1)) {
        T t = a / s;
        index_[dim] = a - t * s;
        a = t;
      } else {
        index_[dim] = a & (s - 1);
        a >>= __popcll(s - 1);
      }
    }
    index_[0] = a;
  }

public:
  __device__ ptrdiff_t size() const { return size_; }
  __device__ const ptrdiff_t* shape() const { return shape_; }
  __device__ const index_t& get() const { return index_; }

  __device__ void set(ptrdiff_t i) {
    if (ndim == 1) {
      index_[0] = i;
    } else if (!_use_32bit_indexing && size_ > 1LL << 31) {
      this->_set(static_cast<unsigned long long int>(i));
    } else {
      this->_set(static_cast<unsigned int>(i));
    }
  }
};
