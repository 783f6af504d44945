/*
 * Fused CPU kernels of the G-space optimizer's hot path (nnteleport.gspace, issue 4).
 *
 * One call computes the coordinates' gradient from the model's gradients (pull), one call the path factors
 * and the weights from the coordinates (push). The maths and the layout are documented in
 * nnteleport/gspace/_hotpath.py (class HotPath); this file only fuses the loops the eager PyTorch path runs as a
 * dozen separate operations. Plain C99, no dependencies; float32 and float64 variants. Compiled at first use
 * (nnteleport/gspace/_native/__init__.py) with -ffp-contract=off, so results do not depend on FMA contraction.
 * nt_layout() reports the ABI version and the struct layout, which Python compares with its ctypes mirror
 * before it calls anything else.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define NT_ABI_VERSION 1

/* x86-64 with GCC: an AVX2 clone of each kernel besides the baseline one, picked at load time by the CPU */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define NT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NT_CLONES
#endif

typedef struct {
    int64_t rows, cols, rep; /* the (rows, cols) matrix of the segment; column c reads source c / rep */
    int64_t hid_base;        /* hidden index of source 0, or -1: no column factor and no T (layer 0, biases) */
    int64_t dense_off;       /* offset of the segment in the dense coordinate / gradient buffers */
    const void *rowf;        /* (rows,) row factors 1 / S */
    void *param;             /* the model parameter's data (rows * cols), written by push */
} nt_seg;

typedef struct {
    int64_t nseg;
    nt_seg *segs;
    int64_t H;                 /* hidden neurons */
    const int64_t *root_loc;   /* (H,) >= 0: dense index of the root pred edge; < 0: -1 - flat index into direct_w */
    const void *cinv;          /* (H,) colf = cinv / Ur = 1 / P */
    void *Ur, *colf, *Tsum, *gsave; /* (H,) scratch: root values, 1 / P, T, saved first-layer gradients */
    int64_t nfixed;
    const int64_t *fixed_dense; /* (nfixed,) dense positions of the fixed skeleton weights (or -1) */
    const int64_t *fixed_seg;   /* segment of each fixed weight */
    const int64_t *fixed_local; /* flat index in that segment's parameter */
    const void *fixed_val;      /* its constant value */
    void *V, *D;                /* dense coordinates and their gradient */
    void *direct_w;             /* the direct (aliased) first-layer weight, or NULL */
    const int64_t *grads;       /* (nseg + 1,) addresses of the segments' model gradients, then of the direct
                                   weight's gradient; set before every pull */
} nt_plan;

/* layout self-check: writes up to n of {ABI version, sizeof(nt_seg), offsets of its 7 fields, sizeof(nt_plan),
   offsets of its 18 fields} into out and returns how many values there are */
int64_t nt_layout(int64_t *out, int64_t n) {
    const int64_t v[] = {
        NT_ABI_VERSION,
        (int64_t)sizeof(nt_seg),
        (int64_t)offsetof(nt_seg, rows), (int64_t)offsetof(nt_seg, cols), (int64_t)offsetof(nt_seg, rep),
        (int64_t)offsetof(nt_seg, hid_base), (int64_t)offsetof(nt_seg, dense_off), (int64_t)offsetof(nt_seg, rowf),
        (int64_t)offsetof(nt_seg, param),
        (int64_t)sizeof(nt_plan),
        (int64_t)offsetof(nt_plan, nseg), (int64_t)offsetof(nt_plan, segs), (int64_t)offsetof(nt_plan, H),
        (int64_t)offsetof(nt_plan, root_loc), (int64_t)offsetof(nt_plan, cinv), (int64_t)offsetof(nt_plan, Ur),
        (int64_t)offsetof(nt_plan, colf), (int64_t)offsetof(nt_plan, Tsum), (int64_t)offsetof(nt_plan, gsave),
        (int64_t)offsetof(nt_plan, nfixed), (int64_t)offsetof(nt_plan, fixed_dense),
        (int64_t)offsetof(nt_plan, fixed_seg), (int64_t)offsetof(nt_plan, fixed_local),
        (int64_t)offsetof(nt_plan, fixed_val), (int64_t)offsetof(nt_plan, V), (int64_t)offsetof(nt_plan, D),
        (int64_t)offsetof(nt_plan, direct_w), (int64_t)offsetof(nt_plan, grads),
    };
    const int64_t k = (int64_t)(sizeof v / sizeof v[0]);
    for (int64_t i = 0; i < n && i < k; ++i) out[i] = v[i];
    return k;
}

#define NT_DEFINE(T, SUFFIX)                                                                                          \
    NT_CLONES void nt_factors_##SUFFIX(const nt_plan *p) {                                                            \
        const T *V = (const T *)p->V, *cinv = (const T *)p->cinv, *dw = (const T *)p->direct_w;                       \
        T *Ur = (T *)p->Ur, *colf = (T *)p->colf;                                                                     \
        for (int64_t a = 0; a < p->H; ++a) {                                                                          \
            int64_t loc = p->root_loc[a];                                                                             \
            T u = loc >= 0 ? V[loc] : dw[-1 - loc];                                                                   \
            Ur[a] = u;                                                                                                \
            colf[a] = cinv[a] / u;                                                                                    \
        }                                                                                                             \
    }                                                                                                                 \
                                                                                                                      \
    NT_CLONES void nt_push_##SUFFIX(const nt_plan *p) {                                                               \
        const T *V = (const T *)p->V, *colf = (const T *)p->colf;                                                     \
        nt_factors_##SUFFIX(p);                                                                                       \
        for (int64_t s = 0; s < p->nseg; ++s) {                                                                       \
            const nt_seg *g = &p->segs[s];                                                                            \
            const T *rowf = (const T *)g->rowf, *v = V + g->dense_off;                                                \
            T *w = (T *)g->param;                                                                                     \
            int64_t rows = g->rows, cols = g->cols, rep = g->rep;                                                     \
            if (g->hid_base < 0) {                                                                                    \
                for (int64_t o = 0; o < rows; ++o) {                                                                  \
                    const T r = rowf[o];                                                                              \
                    const T *vo = v + o * cols;                                                                       \
                    T *wo = w + o * cols;                                                                             \
                    for (int64_t c = 0; c < cols; ++c) wo[c] = vo[c] * r;                                             \
                }                                                                                                     \
            } else if (rep == 1) {                                                                                    \
                const T *cf = colf + g->hid_base;                                                                     \
                for (int64_t o = 0; o < rows; ++o) {                                                                  \
                    const T r = rowf[o];                                                                              \
                    const T *vo = v + o * cols;                                                                       \
                    T *wo = w + o * cols;                                                                             \
                    for (int64_t c = 0; c < cols; ++c) wo[c] = vo[c] * (r * cf[c]);                                   \
                }                                                                                                     \
            } else {                                                                                                  \
                const T *cf = colf + g->hid_base;                                                                     \
                int64_t ns = cols / rep;                                                                              \
                for (int64_t o = 0; o < rows; ++o) {                                                                  \
                    const T r = rowf[o];                                                                              \
                    for (int64_t j = 0; j < ns; ++j) {                                                                \
                        const T f = r * cf[j];                                                                        \
                        const T *vo = v + o * cols + j * rep;                                                         \
                        T *wo = w + o * cols + j * rep;                                                               \
                        for (int64_t k = 0; k < rep; ++k) wo[k] = vo[k] * f;                                          \
                    }                                                                                                 \
                }                                                                                                     \
            }                                                                                                         \
        }                                                                                                             \
        const T *fv = (const T *)p->fixed_val;                                                                        \
        for (int64_t j = 0; j < p->nfixed; ++j) ((T *)p->segs[p->fixed_seg[j]].param)[p->fixed_local[j]] = fv[j];     \
    }                                                                                                                 \
                                                                                                                      \
    NT_CLONES void nt_pull_##SUFFIX(const nt_plan *p) {                                                               \
        const T *V = (const T *)p->V, *Ur = (const T *)p->Ur, *colf = (const T *)p->colf;                             \
        T *D = (T *)p->D, *Ts = (T *)p->Tsum, *gsave = (T *)p->gsave;                                                 \
        T *dg = p->direct_w ? (T *)(intptr_t)p->grads[p->nseg] : NULL;                                                \
        memset(Ts, 0, sizeof(T) * (size_t)p->H);                                                                      \
        for (int64_t s = 0; s < p->nseg; ++s) {                                                                       \
            const nt_seg *g = &p->segs[s];                                                                            \
            const T *rowf = (const T *)g->rowf, *v = V + g->dense_off;                                                \
            const T *G = (const T *)(intptr_t)p->grads[s];                                                            \
            T *d = D + g->dense_off;                                                                                  \
            int64_t rows = g->rows, cols = g->cols, rep = g->rep;                                                     \
            if (g->hid_base < 0) {                                                                                    \
                for (int64_t o = 0; o < rows; ++o) {                                                                  \
                    const T r = rowf[o];                                                                              \
                    const T *go = G + o * cols;                                                                       \
                    T *dO = d + o * cols;                                                                             \
                    for (int64_t c = 0; c < cols; ++c) dO[c] = go[c] * r;                                             \
                }                                                                                                     \
            } else if (rep == 1) {                                                                                    \
                const T *cf = colf + g->hid_base;                                                                     \
                T *ts = Ts + g->hid_base;                                                                             \
                for (int64_t o = 0; o < rows; ++o) {                                                                  \
                    const T r = rowf[o];                                                                              \
                    const T *go = G + o * cols, *vo = v + o * cols;                                                   \
                    T *dO = d + o * cols;                                                                             \
                    for (int64_t c = 0; c < cols; ++c) {                                                              \
                        const T x = go[c] * (r * cf[c]);                                                              \
                        dO[c] = x;                                                                                    \
                        ts[c] += vo[c] * x;                                                                           \
                    }                                                                                                 \
                }                                                                                                     \
            } else {                                                                                                  \
                const T *cf = colf + g->hid_base;                                                                     \
                T *ts = Ts + g->hid_base;                                                                             \
                int64_t ns = cols / rep;                                                                              \
                for (int64_t o = 0; o < rows; ++o) {                                                                  \
                    const T r = rowf[o];                                                                              \
                    for (int64_t j = 0; j < ns; ++j) {                                                                \
                        const T f = r * cf[j];                                                                        \
                        const T *go = G + o * cols + j * rep, *vo = v + o * cols + j * rep;                           \
                        T *dO = d + o * cols + j * rep;                                                               \
                        T acc = 0;                                                                                    \
                        for (int64_t k = 0; k < rep; ++k) {                                                           \
                            const T x = go[k] * f;                                                                    \
                            dO[k] = x;                                                                                \
                            acc += vo[k] * x;                                                                         \
                        }                                                                                             \
                        ts[j] += acc;                                                                                 \
                    }                                                                                                 \
                }                                                                                                     \
            }                                                                                                         \
        }                                                                                                             \
        for (int64_t j = 0; j < p->nfixed; ++j)                                                                       \
            if (p->fixed_dense[j] >= 0) D[p->fixed_dense[j]] = 0;                                                     \
        for (int64_t a = 0; a < p->H; ++a) {                                                                          \
            int64_t loc = p->root_loc[a];                                                                             \
            if (loc < 0) gsave[a] = dg[-1 - loc];                                                                     \
        }                                                                                                             \
        for (int64_t a = 0; a < p->H; ++a) {                                                                          \
            const T c = Ts[a] / Ur[a];                                                                                \
            int64_t loc = p->root_loc[a];                                                                             \
            if (loc >= 0)                                                                                             \
                D[loc] -= c;                                                                                          \
            else                                                                                                      \
                dg[-1 - loc] -= c;                                                                                    \
        }                                                                                                             \
    }                                                                                                                 \
                                                                                                                      \
    NT_CLONES void nt_restore_##SUFFIX(const nt_plan *p) {                                                            \
        T *dg = (T *)(intptr_t)p->grads[p->nseg];                                                                     \
        const T *gsave = (const T *)p->gsave;                                                                         \
        for (int64_t a = 0; a < p->H; ++a) {                                                                          \
            int64_t loc = p->root_loc[a];                                                                             \
            if (loc < 0) dg[-1 - loc] = gsave[a];                                                                     \
        }                                                                                                             \
    }

NT_DEFINE(float, f32)
NT_DEFINE(double, f64)
