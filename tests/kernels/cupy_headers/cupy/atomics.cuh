// Stand-in for CuPy's cupy/atomics.cuh: empty (no fusioncam kernel uses complex numbers, CuPy's atomics or its math constants).
#pragma once
#include "cupy/carray.cuh"
