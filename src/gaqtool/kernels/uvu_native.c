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
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PATH_FIELDS 7

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
                float *gw = grad_w ? grad_w + e * w_dim + q[6] : NULL;
                float *gm = grad_m ? grad_m + e * m_dim + q[5] : NULL;
                if (gw) memset(gw, 0, sizeof(float) * mul);
                for (int a = 0; a < d_in; ++a) {
                    const float *xa = xs + q[0] + a * mul;
                    if (gw) memset(r, 0, sizeof(float) * mul);
                    if (gm) {
#pragma omp simd
                        for (int u = 0; u < mul; ++u) t[u] = wp[u] * xa[u];
                    }
                    for (int c = 0; c < d_out; ++c) {
                        const float *gc = g + q[4] + c * mul;
                        if (gm) {
                            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                            for (int u = 0; u < mul; ++u) dot += t[u] * gc[u];
                            gm[a * d_out + c] = dot;
                        }
                        if (gw) {
                            const float coef = mp[a * d_out + c];
#pragma omp simd
                            for (int u = 0; u < mul; ++u) r[u] += coef * gc[u];
                        }
                    }
                    if (gw) {
#pragma omp simd
                        for (int u = 0; u < mul; ++u) gw[u] += xa[u] * r[u];
                    }
                }
            }
        }
        free(t);
    }
}
