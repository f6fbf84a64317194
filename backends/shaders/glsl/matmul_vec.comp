#version 450
// matmul, matrix-vector form (decode: rows is small, usually 1): out[r] (+)= prologue(x[r]) @ w.T (+ bias).
//
// Memory-bound: every weight byte is read once, with 16-byte loads (uvec4 = 8 f16/bf16 or
// 4 f32 weights). A workgroup computes ROWS consecutive outputs of XR x rows: its WG_SIZE
// invocations stride over the k dimension in 16-byte chunks, UNROLL chunks a round, each
// keeping XR * ROWS partial dot products (UNROLL * ROWS independent weight loads in flight per
// round, each used by the XR rows; x read once per chunk for all outputs), then the partial
// sums are reduced across the workgroup (subgroupAdd plus one shared slot per subgroup, or a
// shared-memory tree without SUBGROUPS).
//
// Batch invariance (the catalogue's BATCH_ROWS): an output's sum depends on neither XR nor ROWS.
// Invocation t takes chunks t, t + WG_SIZE, ... in that order whatever UNROLL and XR are, with
// the same expression per chunk (wdot, unit_dot), and the sums are reduced the same way, so every
// variant gives row r the bits it gets alone (rows = 1, XR = 1): only WG_SIZE and UNROLL must
// match between the variants of one constant set, and the subgroup size between the SUBGROUPS
// ones (one per device on NVIDIA and lavapipe; a driver choosing it per pipeline would need it pinned).
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
    uint out_stride;
    uint out_offset;
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
#define QLAST (4u * uint(w4.length()) - 1u)
#include "quant.glsl"
#else  // other GGUF blocks: 32-bit loads
layout(std430, set = 0, binding = BINDING_W) readonly buffer Buffer_W { uint wq[]; };
#define QWORD(i) wq[i]
#define QLAST (uint(wq.length()) - 1u)
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
#ifndef XR
#define XR 1  // x rows per workgroup, sharing each weight load
#endif
#ifndef UNROLL
#define UNROLL 2u  // chunks per invocation whose loads are issued together
#endif
#if !defined(QBLOCK)
#define XV uint(EPC / 4)  // vec4s of x per chunk
#endif
#define NACC (XR * ROWS)  // dot products of a workgroup: output r of x row xr is sum xr * ROWS + r
#if defined(PROLOGUE_RMSNORM)
#define NSUMS (NACC + XR)  // the extra ones: sum(x*x) of each x row, sums NACC + xr
#else
#define NSUMS NACC
#endif
#if defined(EPILOGUE_SILU_MUL)
#define OUTS (ROWS / 2)  // outputs of a workgroup per x row
#else
#define OUTS ROWS
#endif
#if XR * OUTS > WG_SIZE
#error "one invocation writes each output of a workgroup: XR * OUTS must not exceed WG_SIZE"
#endif

#if SUBGROUPS
// one slot per subgroup and sum; subgroups of at least 4 invocations
shared float red[NSUMS * (WG_SIZE / 4)];
#define RED_STRIDE (WG_SIZE / 4)
#else
shared float red[NSUMS * WG_SIZE];
#define RED_STRIDE WG_SIZE
#endif

// A weight chunk as floats (f32: as loaded; f16, bf16: widened, exactly), and its dot product
// with x: one expression whatever XR is, so a row's sums are the same in every variant.
#if defined(WDTYPE_F32)
struct WChunk {
    vec4 lo;
};
WChunk wchunk(vec4 wv) {
    return WChunk(wv);
}
float wdot(WChunk w, vec4 a) {
    return dot(w.lo, a);
}
#else
struct WChunk {
    vec4 lo;
    vec4 hi;
};
#if defined(WDTYPE_F16)
WChunk wchunk(uvec4 wv) {
    return WChunk(vec4(unpackHalf2x16(wv.x), unpackHalf2x16(wv.y)), vec4(unpackHalf2x16(wv.z), unpackHalf2x16(wv.w)));
}
#else  // bf16: the high 16 bits of a float32
vec4 bf16x4(uint lo, uint hi) {
    return vec4(uintBitsToFloat(lo << 16), uintBitsToFloat(lo & 0xFFFF0000u),
                uintBitsToFloat(hi << 16), uintBitsToFloat(hi & 0xFFFF0000u));
}
WChunk wchunk(uvec4 wv) {
    return WChunk(bf16x4(wv.x, wv.y), bf16x4(wv.z, wv.w));
}
#endif
float wdot(WChunk w, vec4 a, vec4 b) {
    return dot(w.lo, a) + dot(w.hi, b);
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

// the finished dot product of sum s (x row xr) from the reduced partial sums: scaled, biased
float finished(uint s, uint xr, uint j, uint parts) {
    float y = 0.0;
    for (uint i = 0u; i < parts; ++i) {
        y += red[s * RED_STRIDE + i];
    }
#if defined(PROLOGUE_RMSNORM)
    float sq = 0.0;
    for (uint i = 0u; i < parts; ++i) {
        sq += red[(NACC + xr) * RED_STRIDE + i];
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
    uint ngroups = (p.rows + XR - 1u) / XR;
#if defined(PROLOGUE_SILU_MUL)
    uint xrow4 = 2u * (k / 4u);  // x row: [gate | up], 2k wide
#else
    uint xrow4 = k / 4u;
#endif
    // invocation t writes output t % OUTS of x row t / OUTS of the workgroup
    uint wxr = t / uint(OUTS);
    uint wr = t % uint(OUTS);

    // x-row groups vary fastest: the workgroups sharing a weight slice run side by side (L2)
    for (uint blk = gl_WorkGroupID.y; blk < nblocks; blk += gl_NumWorkGroups.y) {
        uint j0 = blk * ROWS;
        uint wb[ROWS];
        [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
#if defined(QBLOCK)
            wb[r] = min(j0 + r, n - 1u) * wstride;  // a byte offset
#else
            wb[r] = min(j0 + r, n - 1u) * nch;  // rows past n repeat the last (not written)
#endif
        }
        for (uint xg = gl_WorkGroupID.x; xg < ngroups; xg += gl_NumWorkGroups.x) {
            uint xbase[XR];
            [[unroll]] for (uint xr = 0u; xr < XR; ++xr) {
                xbase[xr] = min(xg * XR + xr, p.rows - 1u) * xrow4;  // rows past p.rows repeat the last (not written)
            }
            float acc[NACC];
            float ss[XR];
            [[unroll]] for (uint i = 0u; i < NACC; ++i) {
                acc[i] = 0.0;
            }
            [[unroll]] for (uint xr = 0u; xr < XR; ++xr) {
                ss[xr] = 0.0;
            }
            uint row = xg * XR + wxr;
#if defined(EPILOGUE_SILU_MUL)
            // output pairs (gate, up) of the block's rows: ROWS is even and j0 too
            bool writes = t < XR * OUTS && row < p.rows && j0 + 2u * wr + 1u < n;
            uint o = row * p.out_stride + p.out_offset + j0 / 2u + wr;
#else
            bool writes = t < XR * OUTS && row < p.rows && j0 + wr < n;
            uint o = row * p.out_stride + p.out_offset + j0 + wr;
#endif
#if ACCUMULATE
            // loaded before the weights, so that its latency hides behind theirs
            float prev = writes ? out_[o] : 0.0;
#endif

#if defined(QBLOCK)
            for (uint s0 = 0u; s0 < nch; s0 += UNROLL * WG_SIZE) {
                [[unroll]] for (uint q = 0u; q < UNROLL; ++q) {
                    uint u = s0 + t + q * WG_SIZE;
                    if (u >= nch) {  // past the row (uniform where the row is whole rounds)
                        continue;
                    }
                    // unit_dot loads the unit's words again for each x row (the same addresses: merged
                    // by the compiler or served by L1). Split into a load returning a struct and a dot
                    // product, the one-row form ran up to 2.9x slower on the H200 (q4_0, 1B o projection)
                    [[unroll]] for (uint xr = 0u; xr < XR; ++xr) {
                        vec4 xv[8];
                        [[unroll]] for (uint i = 0u; i < 8u; ++i) {
                            uint xi = unit_x4(u, i);
                            xv[i] = x4[xbase[xr] + xi];
#if defined(PROLOGUE_SILU_MUL)
                            xv[i] = silu_mul4(xv[i], x4[xbase[xr] + k / 4u + xi]);
#endif
#if defined(PROLOGUE_RMSNORM)
                            ss[xr] += dot(xv[i], xv[i]);
                            xv[i] *= nw4[xi];
#endif
                        }
                        vec4 xs = unit_xsums(xv);
                        [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
                            acc[xr * ROWS + r] += unit_dot(wb[r], u, xv, xs);
                        }
                    }
                }
            }
#else
            for (uint c0 = t; c0 < nch; c0 += UNROLL * WG_SIZE) {
                // UNROLL chunks per invocation per round: all their weight loads first
                W4 wv[UNROLL * ROWS];
                [[unroll]] for (uint q = 0u; q < UNROLL; ++q) {
                    uint c = min(c0 + q * WG_SIZE, nch - 1u);  // past the row: chunk repeated, x zeroed
                    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
                        wv[q * ROWS + r] = w4[wb[r] + c];
                    }
                }
                [[unroll]] for (uint q = 0u; q < UNROLL; ++q) {
                    uint c = min(c0 + q * WG_SIZE, nch - 1u);
                    WChunk wc[ROWS];
                    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
                        wc[r] = wchunk(wv[q * ROWS + r]);
                    }
                    [[unroll]] for (uint xr = 0u; xr < XR; ++xr) {
                        uint xb = xbase[xr];
                        vec4 xlo = x4[xb + XV * c];
#if EPC == 8
                        vec4 xhi = x4[xb + XV * c + 1u];
#endif
#if defined(PROLOGUE_SILU_MUL)
                        xlo = silu_mul4(xlo, x4[xb + k / 4u + XV * c]);
#if EPC == 8
                        xhi = silu_mul4(xhi, x4[xb + k / 4u + XV * c + 1u]);
#endif
#endif
                        if (c0 + q * WG_SIZE >= nch) {
                            xlo = vec4(0.0);
#if EPC == 8
                            xhi = vec4(0.0);
#endif
                        }
#if defined(PROLOGUE_RMSNORM)
                        ss[xr] += dot(xlo, xlo);
                        xlo *= nw4[XV * c];
#if EPC == 8
                        ss[xr] += dot(xhi, xhi);
                        xhi *= nw4[XV * c + 1u];
#endif
#endif
                        [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
#if EPC == 8
                            acc[xr * ROWS + r] += wdot(wc[r], xlo, xhi);
#else
                            acc[xr * ROWS + r] += wdot(wc[r], xlo);
#endif
                        }
                    }
                }
            }
#endif

            // --- reduce the NSUMS partial sums across the workgroup -------------------
#if SUBGROUPS
            uint sg = gl_SubgroupID;
            bool lead = gl_SubgroupInvocationID == 0u;
            [[unroll]] for (uint i = 0u; i < NACC; ++i) {
                float s = subgroupAdd(acc[i]);
                if (lead) {
                    red[i * RED_STRIDE + sg] = s;
                }
            }
#if defined(PROLOGUE_RMSNORM)
            [[unroll]] for (uint xr = 0u; xr < XR; ++xr) {
                float s2 = subgroupAdd(ss[xr]);
                if (lead) {
                    red[(NACC + xr) * RED_STRIDE + sg] = s2;
                }
            }
#endif
            barrier();
            uint parts = gl_NumSubgroups;
#else
            [[unroll]] for (uint i = 0u; i < NACC; ++i) {
                red[i * RED_STRIDE + t] = acc[i];
            }
#if defined(PROLOGUE_RMSNORM)
            [[unroll]] for (uint xr = 0u; xr < XR; ++xr) {
                red[(NACC + xr) * RED_STRIDE + t] = ss[xr];
            }
#endif
            barrier();
            for (uint s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
                if (t < s) {
                    for (uint i = 0u; i < NSUMS; ++i) {
                        red[i * RED_STRIDE + t] += red[i * RED_STRIDE + t + s];
                    }
                }
                barrier();
            }
            uint parts = 1u;
#endif
            if (writes) {
#if defined(EPILOGUE_SILU_MUL)
                uint s = wxr * ROWS + 2u * wr;
                float g = finished(s, wxr, j0 + 2u * wr, parts);
                float y = g / (1.0 + exp(-g)) * finished(s + 1u, wxr, j0 + 2u * wr + 1u, parts);
#else
                float y = finished(wxr * ROWS + wr, wxr, j0 + wr, parts);
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
