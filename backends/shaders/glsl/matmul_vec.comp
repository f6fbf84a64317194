#version 450
// matmul, matrix-vector form (decode: rows is small, usually 1): out[r] (+)= prologue(x[r]) @ w.T (+ bias).
//
// Memory-bound: every weight byte is read once, with 16-byte loads (uvec4 = 8 f16/bf16 or
// 4 f32 weights). A workgroup computes ROWS consecutive outputs of one x row: its WG_SIZE
// invocations stride over the k dimension in 16-byte chunks, UNROLL chunks a round, each
// keeping ROWS partial dot products (UNROLL * ROWS independent weight loads in flight per
// round, x read once per chunk for all rows), then the partial sums are reduced across the
// workgroup (subgroupAdd plus one shared slot per subgroup, or a shared-memory tree
// without SUBGROUPS).
//
// Needs k % 8 == 0 (f16, bf16) or k % 4 == 0 (f32) so every weight row and x row starts
// on a 16-byte boundary and no load reaches past a buffer's end (the variant's `when`);
// other k take the tiled kernel. Prologues: rmsnorm accumulates sum(x*x) in the same pass
// and scales the finished dot products (normalise(x) . w == scale * ((x*nw) . w)); silu_mul
// reads gate and up and uses silu(gate) * up on the fly. The silu_mul epilogue: w's rows
// interleave gate and up, so each workgroup's rows come in (gate, up) pairs and it writes
// silu(gate) * up of each pair (n/2 outputs).
//
// GGUF block weights (quant.glsl): the invocations stride over units of 32 values instead of
// chunks (a unit is read as its format's words, 16-byte loads for q4_k, dequantized in
// registers); x is read as the unit's 8 vec4s, wherever in the row they lie.
//
// Own declarations instead of the generated header (vector element types), with the same
// bindings and push-constant block: see kernel_matmul.glsl and variants.py.
#extension GL_EXT_control_flow_attributes : enable
#include "common.glsl"

layout(local_size_x = WG_X, local_size_y = WG_Y, local_size_z = WG_Z) in;

layout(push_constant) uniform Params {
    uint rows;
    uint n;
    uint k;
    float eps;
} p;

layout(std430, set = 0, binding = BINDING_X) readonly buffer Buffer_X { vec4 x4[]; };
#if defined(WDTYPE_F32)
layout(std430, set = 0, binding = BINDING_W) readonly buffer Buffer_W { vec4 w4[]; };
#define EPC 4  // weights per 16-byte chunk
#define W4 vec4
#elif defined(WDTYPE_F16) || defined(WDTYPE_BF16)
layout(std430, set = 0, binding = BINDING_W) readonly buffer Buffer_W { uvec4 w4[]; };
#define EPC 8
#define W4 uvec4
#elif defined(WDTYPE_Q4_K)  // 144-byte blocks: 16-byte loads
layout(std430, set = 0, binding = BINDING_W) readonly buffer Buffer_W { uvec4 w4[]; };
#define QVEC4(i) w4[i]
#define QWORD(i) w4[(i) >> 2][(i) & 3u]
#include "quant.glsl"
#else  // other GGUF blocks: 32-bit loads
layout(std430, set = 0, binding = BINDING_W) readonly buffer Buffer_W { uint wq[]; };
#define QWORD(i) wq[i]
#include "quant.glsl"
#endif
#ifdef BINDING_NORM_WEIGHT
layout(std430, set = 0, binding = BINDING_NORM_WEIGHT) readonly buffer Buffer_NORM_WEIGHT { vec4 nw4[]; };
#endif
#ifdef BINDING_BIAS
layout(std430, set = 0, binding = BINDING_BIAS) readonly buffer Buffer_BIAS { float bias[]; };
#endif
layout(std430, set = 0, binding = BINDING_OUT) buffer Buffer_OUT { float out_[]; };

#ifndef ROWS
#define ROWS 4
#endif
#ifndef UNROLL
#define UNROLL 2u  // chunks per invocation whose loads are issued together
#endif
#if !defined(QBLOCK)
#define XV uint(EPC / 4)  // vec4s of x per chunk
#endif
#if defined(PROLOGUE_RMSNORM)
#define NSUMS (ROWS + 1)  // the extra one: sum(x*x)
#else
#define NSUMS ROWS
#endif

#if SUBGROUPS
// one slot per subgroup and sum; subgroups of at least 4 invocations
shared float red[NSUMS * (WG_SIZE / 4)];
#define RED_STRIDE (WG_SIZE / 4)
#else
shared float red[NSUMS * WG_SIZE];
#define RED_STRIDE WG_SIZE
#endif

#if defined(WDTYPE_F32)
float wdot(vec4 wv, vec4 a) {
    return dot(wv, a);
}
#elif defined(WDTYPE_F16)
float wdot(uvec4 wv, vec4 a, vec4 b) {
    return dot(vec4(unpackHalf2x16(wv.x), unpackHalf2x16(wv.y)), a)
         + dot(vec4(unpackHalf2x16(wv.z), unpackHalf2x16(wv.w)), b);
}
#else  // bf16: the high 16 bits of a float32
vec4 bf16x4(uint lo, uint hi) {
    return vec4(uintBitsToFloat(lo << 16), uintBitsToFloat(lo & 0xFFFF0000u),
                uintBitsToFloat(hi << 16), uintBitsToFloat(hi & 0xFFFF0000u));
}
float wdot(uvec4 wv, vec4 a, vec4 b) {
    return dot(bf16x4(wv.x, wv.y), a) + dot(bf16x4(wv.z, wv.w), b);
}
#endif

#if defined(PROLOGUE_SILU_MUL)
vec4 silu_mul4(vec4 g, vec4 u) {
    return g / (1.0 + exp(-g)) * u;
}
#endif

#if defined(EPILOGUE_SILU_MUL) && (ROWS % 2) != 0
#error "the silu_mul epilogue pairs a workgroup's rows: ROWS must be even"
#endif

// output j (the block's row r) from the reduced partial sums: scaled, biased
float finished(uint r, uint j, uint parts) {
    float y = 0.0;
    for (uint i = 0u; i < parts; ++i) {
        y += red[r * RED_STRIDE + i];
    }
#if defined(PROLOGUE_RMSNORM)
    float sq = 0.0;
    for (uint i = 0u; i < parts; ++i) {
        sq += red[ROWS * RED_STRIDE + i];
    }
    y *= 1.0 / sqrt(sq / float(p.k) + p.eps);
#endif
#if BIAS
    y += bias[j];
#endif
    return y;
}

void main() {
    uint t = gl_LocalInvocationIndex;
    uint n = p.n;
    uint k = p.k;
#if defined(QBLOCK)
    uint nch = k / QUNIT;  // units per weight row
    uint wstride = (k / QBLOCK) * QBYTES;  // bytes per weight row
#else
    uint nch = k / uint(EPC);  // 16-byte chunks per weight row
#endif
    uint nblocks = (n + ROWS - 1u) / ROWS;
#if defined(PROLOGUE_SILU_MUL)
    uint xrow4 = 2u * (k / 4u);  // x row: [gate | up], 2k wide
#else
    uint xrow4 = k / 4u;
#endif

    for (uint row = gl_WorkGroupID.y; row < p.rows; row += gl_NumWorkGroups.y) {
        uint xbase = row * xrow4;
        for (uint blk = gl_WorkGroupID.x; blk < nblocks; blk += gl_NumWorkGroups.x) {
            uint j0 = blk * ROWS;
            float acc[ROWS];
            uint wb[ROWS];
            [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
                acc[r] = 0.0;
#if defined(QBLOCK)
                wb[r] = min(j0 + r, n - 1u) * wstride;  // a byte offset
#else
                wb[r] = min(j0 + r, n - 1u) * nch;  // rows past n repeat the last (not written)
#endif
            }
            float ss = 0.0;
#if defined(EPILOGUE_SILU_MUL)
            // output pairs (gate, up) of the block's rows: ROWS is even and j0 too
            bool writes = t < ROWS / 2u && j0 + 2u * t + 1u < n;
            uint o = row * (n / 2u) + j0 / 2u + t;
#else
            bool writes = t < ROWS && j0 + t < n;
            uint o = row * n + j0 + t;
#endif
#if ACCUMULATE
            // loaded before the weights, so that its latency hides behind theirs
            float prev = writes ? out_[o] : 0.0;
#endif

#if defined(QBLOCK)
            for (uint u0 = t; u0 < nch; u0 += UNROLL * WG_SIZE) {
                [[unroll]] for (uint q = 0u; q < UNROLL; ++q) {
                    uint u = min(u0 + q * WG_SIZE, nch - 1u);  // past the row: unit repeated, x zeroed
                    vec4 xv[8];
                    [[unroll]] for (uint i = 0u; i < 8u; ++i) {
                        uint xi = unit_x4(u, i);
                        xv[i] = x4[xbase + xi];
#if defined(PROLOGUE_SILU_MUL)
                        xv[i] = silu_mul4(xv[i], x4[xbase + k / 4u + xi]);
#endif
                        if (u0 + q * WG_SIZE >= nch) {
                            xv[i] = vec4(0.0);
                        }
#if defined(PROLOGUE_RMSNORM)
                        ss += dot(xv[i], xv[i]);
                        xv[i] *= nw4[xi];
#endif
                    }
                    vec4 xs = unit_xsums(xv);
                    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
                        acc[r] += unit_dot(wb[r], u, xv, xs);
                    }
                }
            }
#else
            for (uint c0 = t; c0 < nch; c0 += UNROLL * WG_SIZE) {
                // UNROLL chunks per invocation per round: all their loads first
                W4 wv[UNROLL * ROWS];
                vec4 xlo[UNROLL];
#if EPC == 8
                vec4 xhi[UNROLL];
#endif
                [[unroll]] for (uint q = 0u; q < UNROLL; ++q) {
                    uint c = min(c0 + q * WG_SIZE, nch - 1u);  // past the row: chunk repeated, x zeroed
                    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
                        wv[q * ROWS + r] = w4[wb[r] + c];
                    }
                    xlo[q] = x4[xbase + XV * c];
#if EPC == 8
                    xhi[q] = x4[xbase + XV * c + 1u];
#endif
#if defined(PROLOGUE_SILU_MUL)
                    xlo[q] = silu_mul4(xlo[q], x4[xbase + k / 4u + XV * c]);
#if EPC == 8
                    xhi[q] = silu_mul4(xhi[q], x4[xbase + k / 4u + XV * c + 1u]);
#endif
#endif
                    if (c0 + q * WG_SIZE >= nch) {
                        xlo[q] = vec4(0.0);
#if EPC == 8
                        xhi[q] = vec4(0.0);
#endif
                    }
#if defined(PROLOGUE_RMSNORM)
                    ss += dot(xlo[q], xlo[q]);
                    xlo[q] *= nw4[XV * c];
#if EPC == 8
                    ss += dot(xhi[q], xhi[q]);
                    xhi[q] *= nw4[XV * c + 1u];
#endif
#endif
                }
                [[unroll]] for (uint q = 0u; q < UNROLL; ++q) {
                    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
#if EPC == 8
                        acc[r] += wdot(wv[q * ROWS + r], xlo[q], xhi[q]);
#else
                        acc[r] += wdot(wv[q * ROWS + r], xlo[q]);
#endif
                    }
                }
            }
#endif

            // --- reduce the NSUMS partial sums across the workgroup -------------------
#if SUBGROUPS
            uint sg = gl_SubgroupID;
            bool lead = gl_SubgroupInvocationID == 0u;
            [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
                float s = subgroupAdd(acc[r]);
                if (lead) {
                    red[r * RED_STRIDE + sg] = s;
                }
            }
#if defined(PROLOGUE_RMSNORM)
            float s2 = subgroupAdd(ss);
            if (lead) {
                red[ROWS * RED_STRIDE + sg] = s2;
            }
#endif
            barrier();
            uint parts = gl_NumSubgroups;
#else
            [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
                red[r * RED_STRIDE + t] = acc[r];
            }
#if defined(PROLOGUE_RMSNORM)
            red[ROWS * RED_STRIDE + t] = ss;
#endif
            barrier();
            for (uint s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
                if (t < s) {
                    for (uint r = 0u; r < NSUMS; ++r) {
                        red[r * RED_STRIDE + t] += red[r * RED_STRIDE + t + s];
                    }
                }
                barrier();
            }
            uint parts = 1u;
#endif
            if (writes) {
#if defined(EPILOGUE_SILU_MUL)
                float g = finished(2u * t, j0 + 2u * t, parts);
                float y = g / (1.0 + exp(-g)) * finished(2u * t + 1u, j0 + 2u * t + 1u, parts);
#else
                float y = finished(t, j0 + t, parts);
#endif
#if ACCUMULATE
                y += prev;
#endif
                out_[o] = y;
            }
            barrier();  // red is reused by the next block
        }
    }
}
