"""Compiled kernels: ``cpu`` (Cython + OpenMP) and ``cuda`` (Numba-CUDA, imported on first GPU call).

Kernels take only contiguous arrays, preallocated outputs and scalars, in the order
(inputs, outputs, scalars, n_threads); they allocate and validate nothing.
"""
