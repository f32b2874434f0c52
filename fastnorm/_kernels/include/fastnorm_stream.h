/* The streaming-bound kernel's loop: one pass over [lo, hi) touching every stream once per element.
 *
 * s = sum of the read-only and read-write streams; read-write streams get s / 2; write-only streams get s.
 * The stream counts are compile-time constants in each instantiation (FN_STREAM_CASE), so the stream loops
 * unroll and the element loop vectorizes with all streams in flight at once, like a fused op's loop.
 * Streams never overlap (each is its own row of a separate array), hence ivdep.
 */
#ifndef FASTNORM_STREAM_H
#define FASTNORM_STREAM_H
#include <stddef.h>

#define FN_STREAM_MAX_R 4
#define FN_STREAM_MAX_U 4
#define FN_STREAM_MAX_W 3

#define FN_STREAM_LOOP(R, U, W)                                                                        \
    {                                                                                                  \
        _Pragma("GCC ivdep")                                                                           \
        for (ptrdiff_t i = lo; i < hi; i++) {                                                          \
            float s = 0.0f;                                                                            \
            for (int k = 0; k < (R); k++) s += rd[k][i];                                               \
            for (int k = 0; k < (U); k++) s += up[k][i];                                               \
            for (int k = 0; k < (U); k++) up[k][i] = 0.5f * s;                                         \
            for (int k = 0; k < (W); k++) wr[k][i] = s;                                                \
        }                                                                                              \
        return 0;                                                                                      \
    }

#define FN_STREAM_W(R, U)                                                                              \
    switch (w) {                                                                                       \
    case 0: FN_STREAM_LOOP(R, U, 0) case 1: FN_STREAM_LOOP(R, U, 1)                                    \
    case 2: FN_STREAM_LOOP(R, U, 2) case 3: FN_STREAM_LOOP(R, U, 3)                                    \
    }
#define FN_STREAM_U(R)                                                                                 \
    switch (u) {                                                                                       \
    case 0: FN_STREAM_W(R, 0) break; case 1: FN_STREAM_W(R, 1) break; case 2: FN_STREAM_W(R, 2) break; \
    case 3: FN_STREAM_W(R, 3) break; case 4: FN_STREAM_W(R, 4) break;                                  \
    }

/* Returns 0, or -1 if the stream counts exceed the instantiated maxima (nothing is touched then). */
static inline int fn_stream_range(const float *const *rd, int r, float *const *up, int u, float *const *wr,
                                  int w, ptrdiff_t lo, ptrdiff_t hi) {
    switch (r) {
    case 0: FN_STREAM_U(0) break; case 1: FN_STREAM_U(1) break; case 2: FN_STREAM_U(2) break;
    case 3: FN_STREAM_U(3) break; case 4: FN_STREAM_U(4) break;
    }
    return -1;
}
#endif
