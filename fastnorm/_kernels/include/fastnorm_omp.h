/* OpenMP queries that also compile without OpenMP (serial build). */
#ifndef FASTNORM_OMP_H
#define FASTNORM_OMP_H
#ifdef _OPENMP
#include <omp.h>
static inline int fn_openmp_enabled(void) { return 1; }
static inline int fn_max_threads(void) { return omp_get_max_threads(); }
#else
static inline int fn_openmp_enabled(void) { return 0; }
static inline int fn_max_threads(void) { return 1; }
#endif
#endif
