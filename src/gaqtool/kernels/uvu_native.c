/* Fused uvu tensor-product convolution on CPU (float32), compiled at first use by
 * gaqtool.kernels.native and called through ctypes. Plain C, no torch headers.
 *
 * Layouts (all row-major, contiguous):
 *   xt   [num_nodes, x_dim]   node features, each input irrep block as [2l+1, mul] (ir_mul:
 *                             the channel index u is contiguous, so inner loops vectorize)
 *   m    [num_edges, m_dim]   per edge and path p, the matrix M_p[a, c] = sum_b C_p[a, b, c] Y[b]
 *                             (path weight included), stored [d_in, d_out] at m_off
 *   w    [num_edges, w_dim]   per edge and path p, the weights w_p[u] at w_off (e3nn's layout)
 *   out  [num_nodes, out_dim] output irrep blocks as [2l+1, mul] (ir_mul)
 * A path is 7 int32: x_off, mul, d_in, d_out, out_off, m_off, w_off.
 *
 *   out[dst, k][c, u] += sum_a M_p[e][a, c] * w_p[e][u] * xt[src, i][a, u]
 *
 * Scatters are done without atomics: the caller sorts the edges by receiver (forward) or by
 * sender (gradient of the node features) and gives CSR row pointers; each thread owns whole
 * output rows.
 *
 * Where the compiler targets AVX-512 or AVX2 + FMA (-march=native on such a CPU), the loops over
 * channels u take 16 or 8 at a time with intrinsics (masked for the rest), and the small [2l+1]
 * blocks of a path are held in registers: each output row is read and written once per block of
 * channels, and the dot products of the gradient of M run as independent accumulators. Other
 * CPUs, and blocks with 2l+1 > 7, take the portable loops.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PATH_FIELDS 7

/* One SIMD vocabulary for the blocked loops: 16 lanes (AVX-512) or 8 (AVX2 + FMA). n is the
 * number of channels left from p; loads past it read zeros and stores past it write nothing. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define VLEN 16
typedef __m512 vec;
static inline __mmask16 lanes(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}
static inline vec vload(const float *p, int n) { return _mm512_maskz_loadu_ps(lanes(n), p); }
static inline void vstore(float *p, int n, vec v) { _mm512_mask_storeu_ps(p, lanes(n), v); }
static inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
#define vzero _mm512_setzero_ps
#define vset1 _mm512_set1_ps
#define vmul _mm512_mul_ps
#define vfmadd _mm512_fmadd_ps
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VLEN 8
typedef __m256 vec;
static inline __m256i lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
/* full blocks take plain loads and stores: masked stores are slow on several AVX2 cores */
static inline vec vload(const float *p, int n) {
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes(n));
}
static inline void vstore(float *p, int n, vec v) {
    if (n >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, lanes(n), v);
}
static inline float vsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
#define vzero _mm256_setzero_ps
#define vset1 _mm256_set1_ps
#define vmul _mm256_mul_ps
#define vfmadd _mm256_fmadd_ps
#endif

#ifdef VLEN
#define MAX_D 7 /* 2l + 1 for l <= 3: larger blocks take the portable loops */

/* out[c][u] += sum_a M[a, c] w[u] x[a][u] for one edge and path, VLEN channels at a time: each
 * output row is loaded and stored once per block instead of once per input row. */
static void message_block(int mul, int d_in, int d_out, const float *x, const float *w,
                          const float *mp, float *out) {
    vec t[MAX_D];
    for (int u0 = 0; u0 < mul; u0 += VLEN) {
        const int n = mul - u0;
        const vec wv = vload(w + u0, n);
        for (int a = 0; a < d_in; ++a) t[a] = vmul(wv, vload(x + a * mul + u0, n));
        for (int c = 0; c < d_out; ++c) {
            vec o = vload(out + c * mul + u0, n);
            for (int a = 0; a < d_in; ++a) o = vfmadd(vset1(mp[a * d_out + c]), t[a], o);
            vstore(out + c * mul + u0, n, o);
        }
    }
}

/* gx[a][u] += w[u] sum_c M[a, c] g[c][u] for one edge and path, VLEN channels at a time. */
static void node_grad_block(int mul, int d_in, int d_out, const float *g, const float *w,
                            const float *mp, float *gx) {
    vec gv[MAX_D];
    for (int u0 = 0; u0 < mul; u0 += VLEN) {
        const int n = mul - u0;
        const vec wv = vload(w + u0, n);
        for (int c = 0; c < d_out; ++c) gv[c] = vload(g + c * mul + u0, n);
        for (int a = 0; a < d_in; ++a) {
            vec r = vzero();
            for (int c = 0; c < d_out; ++c) r = vfmadd(vset1(mp[a * d_out + c]), gv[c], r);
            float *ga = gx + a * mul + u0;
            vstore(ga, n, vfmadd(wv, r, vload(ga, n)));
        }
    }
}
#endif

static int64_t max_mul(const int32_t *paths, int64_t num_paths) {
    int64_t best = 1;
    for (int64_t p = 0; p < num_paths; ++p)
        if (paths[p * PATH_FIELDS + 1] > best) best = paths[p * PATH_FIELDS + 1];
    return best;
}

/* out (zero-filled by the caller) += messages of the edges order[rowptr[n]:rowptr[n+1]] */
void uvu_forward(int64_t num_nodes, const int64_t *rowptr, const int64_t *order,
                 const int64_t *src, const float *xt, int64_t x_dim, const float *m,
                 int64_t m_dim, const float *w, int64_t w_dim, const int32_t *paths,
                 int64_t num_paths, float *out, int64_t out_dim, int num_threads) {
    const int64_t scratch = max_mul(paths, num_paths);
#pragma omp parallel num_threads(num_threads)
    {
        float *t = (float *)malloc(sizeof(float) * scratch);
#pragma omp for schedule(dynamic, 8)
        for (int64_t n = 0; n < num_nodes; ++n) {
            float *acc = out + n * out_dim;
            for (int64_t k = rowptr[n]; k < rowptr[n + 1]; ++k) {
                const int64_t e = order[k];
                const float *xs = xt + src[e] * x_dim;
                const float *me = m + e * m_dim;
                const float *we = w + e * w_dim;
                for (int64_t p = 0; p < num_paths; ++p) {
                    const int32_t *q = paths + p * PATH_FIELDS;
                    const int mul = q[1], d_in = q[2], d_out = q[3];
                    const float *mp = me + q[5];
                    const float *wp = we + q[6];
#ifdef VLEN
                    if (d_in <= MAX_D && d_out <= MAX_D) {
                        message_block(mul, d_in, d_out, xs + q[0], wp, mp, acc + q[4]);
                        continue;
                    }
#endif
                    for (int a = 0; a < d_in; ++a) {
                        const float *xa = xs + q[0] + a * mul;
#pragma omp simd
                        for (int u = 0; u < mul; ++u) t[u] = wp[u] * xa[u];
                        for (int c = 0; c < d_out; ++c) {
                            const float coef = mp[a * d_out + c];
                            float *oc = acc + q[4] + c * mul;
#pragma omp simd
                            for (int u = 0; u < mul; ++u) oc[u] += coef * t[u];
                        }
                    }
                }
            }
        }
        free(t);
    }
}

/* grad_xt (zero-filled) += for the edges order[rowptr[s]:rowptr[s+1]] leaving node s:
 *   grad_xt[s, i][a, u] += w_p[u] * sum_c M_p[a, c] * grad_out[dst, k][c, u] */
void uvu_grad_nodes(int64_t num_nodes, const int64_t *rowptr, const int64_t *order,
                    const int64_t *dst, const float *grad_out, int64_t out_dim, const float *m,
                    int64_t m_dim, const float *w, int64_t w_dim, const int32_t *paths,
                    int64_t num_paths, float *grad_xt, int64_t x_dim, int num_threads) {
    const int64_t scratch = max_mul(paths, num_paths);
#pragma omp parallel num_threads(num_threads)
    {
        float *t = (float *)malloc(sizeof(float) * scratch);
#pragma omp for schedule(dynamic, 8)
        for (int64_t s = 0; s < num_nodes; ++s) {
            float *acc = grad_xt + s * x_dim;
            for (int64_t k = rowptr[s]; k < rowptr[s + 1]; ++k) {
                const int64_t e = order[k];
                const float *g = grad_out + dst[e] * out_dim;
                const float *me = m + e * m_dim;
                const float *we = w + e * w_dim;
                for (int64_t p = 0; p < num_paths; ++p) {
                    const int32_t *q = paths + p * PATH_FIELDS;
                    const int mul = q[1], d_in = q[2], d_out = q[3];
                    const float *mp = me + q[5];
                    const float *wp = we + q[6];
#ifdef VLEN
                    if (d_in <= MAX_D && d_out <= MAX_D) {
                        node_grad_block(mul, d_in, d_out, g + q[4], wp, mp, acc + q[0]);
                        continue;
                    }
#endif
                    for (int a = 0; a < d_in; ++a) {
                        memset(t, 0, sizeof(float) * mul);
                        for (int c = 0; c < d_out; ++c) {
                            const float coef = mp[a * d_out + c];
                            const float *gc = g + q[4] + c * mul;
#pragma omp simd
                            for (int u = 0; u < mul; ++u) t[u] += coef * gc[u];
                        }
                        float *ga = acc + q[0] + a * mul;
#pragma omp simd
                        for (int u = 0; u < mul; ++u) ga[u] += wp[u] * t[u];
                    }
                }
            }
        }
        free(t);
    }
}

/* One input row a of one path of one edge, for a fixed number D of output rows (D <= 7):
 *   gm[c]  = sum_u w[u] x[u] g_c[u]              (c < D; NULL: not wanted)
 *   gw[u] += x[u] * sum_c coef[c] g_c[u]         (NULL: not wanted)
 * The u loop runs in blocks of VLEN with D independent vector accumulators, so the dot
 * products are throughput-bound rather than bound by the latency of one reduction chain. */
#ifdef VLEN
#define ROW_KERNEL(D)                                                                          \
    static void grad_row_##D(int mul, const float *restrict x, const float *restrict w,       \
                             const float *restrict g, const float *restrict coef,             \
                             float *restrict gm, float *restrict gw) {                        \
        vec acc[D];                                                                            \
        for (int c = 0; c < D; ++c) acc[c] = vzero();                                          \
        for (int u0 = 0; u0 < mul; u0 += VLEN) {                                               \
            const int n = mul - u0;                                                            \
            const vec xv = vload(x + u0, n);                                                   \
            const vec t = vmul(vload(w + u0, n), xv);                                          \
            vec r = vzero();                                                                   \
            for (int c = 0; c < D; ++c) {                                                      \
                const vec gc = vload(g + c * mul + u0, n);                                     \
                acc[c] = vfmadd(t, gc, acc[c]);                                                \
                r = vfmadd(vset1(coef[c]), gc, r);                                             \
            }                                                                                  \
            if (gw) vstore(gw + u0, n, vfmadd(xv, r, vload(gw + u0, n)));                      \
        }                                                                                      \
        if (gm)                                                                                \
            for (int c = 0; c < D; ++c) gm[c] = vsum(acc[c]);                                  \
    }
ROW_KERNEL(1)
ROW_KERNEL(3)
ROW_KERNEL(5)
ROW_KERNEL(7)
#endif

/* The same for any D: the portable loops (and blocks with 2l+1 > 7). */
static void grad_row_any(int d_out, int mul, const float *x, const float *w, const float *g,
                         const float *coef, float *gm, float *gw, float *t, float *r) {
    if (gm) {
#pragma omp simd
        for (int u = 0; u < mul; ++u) t[u] = w[u] * x[u];
    }
    if (gw) memset(r, 0, sizeof(float) * mul);
    for (int c = 0; c < d_out; ++c) {
        const float *gc = g + c * mul;
        if (gm) {
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int u = 0; u < mul; ++u) dot += t[u] * gc[u];
            gm[c] = dot;
        }
        if (gw) {
            const float k = coef[c];
#pragma omp simd
            for (int u = 0; u < mul; ++u) r[u] += k * gc[u];
        }
    }
    if (gw) {
#pragma omp simd
        for (int u = 0; u < mul; ++u) gw[u] += x[u] * r[u];
    }
}

/* Per edge (no scatter): grad_w_p[u] = sum_a xt[src, i][a, u] * sum_c M_p[a, c] g[dst, k][c, u]
 * and grad_m_p[a, c] = sum_u w_p[u] xt[src, i][a, u] g[dst, k][c, u]. Either output may be NULL.
 * Every weight and matrix entry belongs to one path, so both are written, not accumulated. */
void uvu_grad_edges(int64_t num_edges, const int64_t *src, const int64_t *dst,
                    const float *xt, int64_t x_dim, const float *grad_out, int64_t out_dim,
                    const float *m, int64_t m_dim, const float *w, int64_t w_dim,
                    const int32_t *paths, int64_t num_paths, float *grad_w, float *grad_m,
                    int num_threads) {
    const int64_t scratch = max_mul(paths, num_paths);
#pragma omp parallel num_threads(num_threads)
    {
        float *t = (float *)malloc(sizeof(float) * 2 * scratch);
        float *r = t + scratch;
#pragma omp for schedule(static)
        for (int64_t e = 0; e < num_edges; ++e) {
            const float *xs = xt + src[e] * x_dim;
            const float *g = grad_out + dst[e] * out_dim;
            const float *me = m + e * m_dim;
            const float *we = w + e * w_dim;
            for (int64_t p = 0; p < num_paths; ++p) {
                const int32_t *q = paths + p * PATH_FIELDS;
                const int mul = q[1], d_in = q[2], d_out = q[3];
                const float *mp = me + q[5];
                const float *wp = we + q[6];
                const float *gp = g + q[4];
                float *gw = grad_w ? grad_w + e * w_dim + q[6] : NULL;
                float *gm = grad_m ? grad_m + e * m_dim + q[5] : NULL;
                if (gw) memset(gw, 0, sizeof(float) * mul);
                for (int a = 0; a < d_in; ++a) {
                    const float *xa = xs + q[0] + a * mul;
                    const float *coef = mp + a * d_out;
                    float *gma = gm ? gm + a * d_out : NULL;
#ifdef VLEN
                    switch (d_out) {
                        case 1: grad_row_1(mul, xa, wp, gp, coef, gma, gw); continue;
                        case 3: grad_row_3(mul, xa, wp, gp, coef, gma, gw); continue;
                        case 5: grad_row_5(mul, xa, wp, gp, coef, gma, gw); continue;
                        case 7: grad_row_7(mul, xa, wp, gp, coef, gma, gw); continue;
                        default: break;
                    }
#endif
                    grad_row_any(d_out, mul, xa, wp, gp, coef, gma, gw, t, r);
                }
            }
        }
        free(t);
    }
}
