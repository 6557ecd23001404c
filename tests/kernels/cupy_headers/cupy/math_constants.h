// Stand-in for CuPy's cupy/math_constants.h: empty (no fusioncam kernel uses complex numbers, CuPy's atomics or its math constants).
#pragma once
#include "cupy/carray.cuh"
