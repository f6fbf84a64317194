#version 450
// matmul, tiled matrix-matrix form (prefill; also any shape the matrix-vector form cannot
// take, such as an odd k): out[r] (+)= prologue(x[r]) @ w.T (+ bias).
//
// A workgroup of 16 x 16 invocations computes a BM x BN tile of out (BM = 16 TM rows,
// BN = 16 TN columns), each invocation TM x TN adjacent outputs (rows TM ty + i, columns
// TN tx + j), so that per k step it reads its TM rows of x and TN columns of w from shared
// memory as whole vec4s (TN = 4; TM = 4 or 1): 2 shared loads per 16 multiply-adds, not 8,
// which is what a scalar 4 x 4 tile is bound by. k is walked in BK-deep slices staged in
// shared memory; the next slice's global loads are issued into registers before the
// current slice is multiplied (one slice of prefetch), so their latency overlaps the math.
//
// Loaders: invocation t loads XPT = BM * BK / 256 consecutive k of x row t * XPT / BK and
// WPT = BN * BK / 256 consecutive k of w row t * WPT / BK per slice. The x loader applies
// the prologue (silu(gate) * up; or x * norm_weight while keeping sum(x * x) of its row:
// the row's loaders' sums give its rmsnorm scale at the end). 16-bit weights come in
// packed words, two at a time when k is even; an odd k reads them one by one (a row then
// starts mid-word) and never touches a word past the last element. GGUF blocks are dequantized
// 4 values at a time as they are loaded (quant.glsl), so shared memory holds float32 as always.
//
// The silu_mul epilogue (w's rows interleave gate and up) writes silu(gate) * up of each
// invocation's adjacent column pairs.
//
// Grid: x over column tiles, y over row tiles (both grid-stride).
#extension GL_EXT_control_flow_attributes : enable
#include "kernel_matmul.glsl"

#ifndef TM
#define TM 4
#endif
#ifndef TN
#define TN 4
#endif
#define BM (16u * uint(TM))
#define BN (16u * uint(TN))
#define BK 16u
#define XPT (TM * 16 * 16 / 256)  // x elements per invocation and slice (TM)
#define WPT (TN * 16 * 16 / 256)  // w elements per invocation and slice (TN)

#if TN != 4 || (TM != 4 && TM != 1)
#error "matmul_tiled.comp reads shared memory as vec4s: TN = 4 and TM = 4 or 1"
#endif
#define XROW (BM / 4u + 1u)  // vec4s per k of the staged x slice (one of padding)
#define WROW (BN / 4u + 1u)
shared vec4 xs[BK * XROW];  // [kk][m / 4], component m % 4
shared vec4 ws[BK * WROW];  // [kk][j / 4], component j % 4
#if defined(PROLOGUE_RMSNORM)
shared float row_ss[WG_SIZE];
#endif

// the slice being prefetched
float xr[XPT];
float wr[WPT];
float ss;

void load_slice(uint k0, uint m0, uint j0, uint t) {
    uint rows = p.rows;
    uint n = p.n;
    uint k = p.k;
#if defined(PROLOGUE_SILU_MUL)
    uint xstride = 2u * k;
#else
    uint xstride = k;
#endif
    // x: row xrow, k from xk
    uint xrow = m0 + (t * uint(XPT)) / BK;
    uint xk = k0 + (t * uint(XPT)) % BK;
    [[unroll]] for (uint i = 0u; i < uint(XPT); ++i) {
        uint kk = xk + i;
        bool inside = xrow < rows && kk < k;
        uint at = inside ? xrow * xstride + kk : 0u;
#if defined(PROLOGUE_SILU_MUL)
        float g = inside ? x[at] : 0.0;
        float u = inside ? x[at + k] : 0.0;
        xr[i] = g / (1.0 + exp(-g)) * u;
#else
        xr[i] = inside ? x[at] : 0.0;
#endif
#if defined(PROLOGUE_RMSNORM)
        ss += xr[i] * xr[i];
        xr[i] *= inside ? norm_weight[kk] : 0.0;
#endif
    }
    // w: row wrow, k from wk
    uint wrow = j0 + (t * uint(WPT)) / BK;
    uint wk = k0 + (t * uint(WPT)) % BK;
#if !defined(QBLOCK)
    uint e = wrow * k + wk;
#endif
    bool row_ok = wrow < n;
#if defined(QBLOCK)
    // GGUF blocks: 4 values of one block (k is whole blocks, so wk + 3 < k)
    vec4 v = vec4(0.0);
    if (row_ok) {
        v = dequant4(wrow * (k / QBLOCK) * QBYTES, wk);
    }
    [[unroll]] for (uint i = 0u; i < 4u; ++i) {
        wr[i] = v[i];
    }
#elif defined(WDTYPE_F32)
    [[unroll]] for (uint i = 0u; i < uint(WPT); ++i) {
        wr[i] = row_ok && wk + i < k ? w[e + i] : 0.0;
    }
#else
#if (WPT % 2) == 0
    if ((k & 1u) == 0u) {  // e is even: whole words
        [[unroll]] for (uint i = 0u; i < uint(WPT); i += 2u) {
            vec2 v = row_ok && wk + i < k ? load2_w((e + i) >> 1) : vec2(0.0);
            wr[i] = v.x;
            wr[i + 1u] = v.y;
        }
    } else
#endif
    {
        [[unroll]] for (uint i = 0u; i < uint(WPT); ++i) {
            wr[i] = row_ok && wk + i < k ? load_w(e + i) : 0.0;
        }
    }
#endif
}

void main() {
    uint t = gl_LocalInvocationIndex;
    uint tx = t % 16u;
    uint ty = t / 16u;
    uint rows = p.rows;
    uint n = p.n;
    uint k = p.k;
    uint ntn = (n + BN - 1u) / BN;
    uint ntm = (rows + BM - 1u) / BM;
    uint xrow_local = (t * uint(XPT)) / BK;
    uint xk_local = (t * uint(XPT)) % BK;
    uint wrow_local = (t * uint(WPT)) / BK;
    uint wk_local = (t * uint(WPT)) % BK;

    for (uint tm = gl_WorkGroupID.y; tm < ntm; tm += gl_NumWorkGroups.y) {
        for (uint tn = gl_WorkGroupID.x; tn < ntn; tn += gl_NumWorkGroups.x) {
            uint m0 = tm * BM;
            uint j0 = tn * BN;
            float acc[TM * TN];
            [[unroll]] for (uint i = 0u; i < uint(TM * TN); ++i) {
                acc[i] = 0.0;
            }
            ss = 0.0;
            load_slice(0u, m0, j0, t);

            for (uint k0 = 0u; k0 < k; k0 += BK) {
                [[unroll]] for (uint i = 0u; i < uint(XPT); ++i) {
                    xs[(xk_local + i) * XROW + xrow_local / 4u][xrow_local % 4u] = xr[i];
                }
                [[unroll]] for (uint i = 0u; i < uint(WPT); ++i) {
                    ws[(wk_local + i) * WROW + wrow_local / 4u][wrow_local % 4u] = wr[i];
                }
                barrier();
                if (k0 + BK < k) {
                    load_slice(k0 + BK, m0, j0, t);  // in flight during the math below
                }
                [[unroll]] for (uint kk = 0u; kk < BK; ++kk) {
                    vec4 b = ws[kk * WROW + tx];
#if TM == 4
                    vec4 a = xs[kk * XROW + ty];
#else
                    vec4 a = vec4(xs[kk * XROW + ty / 4u][ty % 4u]);
#endif
                    [[unroll]] for (uint i = 0u; i < uint(TM); ++i) {
                        [[unroll]] for (uint j = 0u; j < uint(TN); ++j) {
                            acc[i * TN + j] += a[i] * b[j];
                        }
                    }
                }
                barrier();
            }

#if defined(PROLOGUE_RMSNORM)
            row_ss[t] = ss;
            barrier();
#endif
            [[unroll]] for (uint i = 0u; i < uint(TM); ++i) {
                uint r = uint(TM) * ty + i;
                uint m = m0 + r;
                if (m >= rows) {
                    continue;
                }
#if defined(PROLOGUE_RMSNORM)
                // tile row r was loaded by invocations r * BK / XPT .. (r + 1) * BK / XPT - 1
                float sq = 0.0;
                [[unroll]] for (uint q = 0u; q < BK / uint(XPT); ++q) {
                    sq += row_ss[r * (BK / uint(XPT)) + q];
                }
                float scale = 1.0 / sqrt(sq / float(k) + p.eps);
#endif
                float y[TN];
                [[unroll]] for (uint j = 0u; j < uint(TN); ++j) {
                    uint col = min(j0 + uint(TN) * tx + j, n - 1u);
                    y[j] = acc[i * TN + j];
#if defined(PROLOGUE_RMSNORM)
                    y[j] *= scale;
#endif
#if BIAS
                    y[j] += bias[col];
#endif
                }
#if defined(EPILOGUE_SILU_MUL)
                // columns (gate, up) pairs: TN is even and so is every invocation's first column
                [[unroll]] for (uint j = 0u; j < uint(TN); j += 2u) {
                    uint col = j0 + uint(TN) * tx + j;
                    if (col + 1u < n) {
                        float v = y[j] / (1.0 + exp(-y[j])) * y[j + 1u];
                        uint o = m * p.out_stride + p.out_offset + col / 2u;
#else
                [[unroll]] for (uint j = 0u; j < uint(TN); ++j) {
                    uint col = j0 + uint(TN) * tx + j;
                    if (col < n) {
                        float v = y[j];
                        uint o = m * p.out_stride + p.out_offset + col;
#endif
#if ACCUMULATE
                        v += out_[o];
#endif
                        out_[o] = v;
                    }
                }
            }
#if defined(PROLOGUE_RMSNORM)
            barrier();  // row_ss is reused by the next tile
#endif
        }
    }
}
