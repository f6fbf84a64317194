#version 450
// matmul, cooperative-matrix (tensor core) form for prefill: out[r] (+)= prologue(x[r]) @ w.T
// (+ bias), f16, bf16 or GGUF block weights, on devices reporting the subgroup-scope 16 x 16 x 16 product
// f16 x f16 + f32 -> f32 (VK_KHR_cooperative_matrix). Compiled by the pinned glslangValidator
// (build.py: Debian 12's glslc predates GL_KHR_cooperative_matrix); never given to wgpu.
//
// A workgroup of WARPS_M x WARPS_N subgroups of 32 computes a BM x BN tile of out, each
// subgroup FM x FN 16 x 16 accumulators (f32). k is walked in BK-deep slices staged in shared
// memory as f16: x by the loaders, which apply the prologue in f32 (silu(gate) * up; or
// x * norm_weight while keeping sum(x * x) of the row, whose rmsnorm scale multiplies the row's
// results at the end) and then split each value in two f16 parts: hi, x cut to f16's 11
// significant bits (a mask, exact in f16 for |x| >= 2^-14), and lo = x - hi (exact in f32; in
// f16 a subnormal below |x| ~ 2^-3, which the H200 keeps). hi and lo products go to the same
// accumulators: the matrix unit aligns a sum to its largest term and truncates, which costs
// lo x w (2^-11 of hi x w) a few of its bits, not the product's accuracy (H200: worst product
// error 3e-6 against MODEL_PRODUCT's 1e-5, whole-model logits 2.5e-3 against 5e-3; lo in
// accumulators of its own, scaled by 2^10, measured 1.5e-6 and 1.9e-3 for twice the registers
// and 1.4x the time, benches/RESULTS.md). x keeps about 22 bits (with f16 alone, 11, the error
// compounded over a model's layers to ~4x its logits budget). hi is cut by a bit mask, not by an
// f16 round trip x - f32(f16(x)), which a compiler may fold to 0: with it, the split changed
// nothing on the H200, as if lo were 0. w is copied as it is (f16) or converted (bf16 -> f16:
// exact for every bf16 value in f16's range). GGUF blocks (quant.glsl) are dequantized in f32 by
// the loaders and split like x: a block value (an f16 scale times a small integer, up to ~14
// significant bits; the k-quants' ~21) does not fit f16, and rounded it would err by ~1e-4 of a
// product, 10x MODEL_PRODUCT. Their slice stages w's hi and lo rows too, and each step adds a
// third product, x hi times w lo (x lo times w lo, 2^-22 of the sum, is left out). One slice is staged at a time (two barriers a
// slice, so that a 64-deep slice fits in 48 KiB, the H200's limit under Vulkan): the next
// slice's global loads are issued into registers before the current one is multiplied, and
// the arithmetic on them (prologue, split, dequantizing) waits until that slice is stored, so
// load latency overlaps the math. Staged rows are padded by 16 bytes so the 8 rows a matrix
// load reads at once fall in different banks.
//
// Loaders: the slice of x is BM rows of BK/8 chunks of 8 elements (two vec4 loads, a uvec4
// store to each of the hi and lo rows; norm_weight in vec4 too), chunk q = t + GROUP i being
// row q / (BK/8), t the invocation's index in its group; w's likewise (one uvec4 load). k is a multiple of 8 (the variant's `when`), so chunks are whole
// and rows start on 16 bytes.
//
// The accumulators are stored to shared memory (over the slice) and the epilogue (rmsnorm
// scale, bias, silu_mul pairs, accumulate) runs from there, 4 adjacent columns an invocation.
//
// Grid: x over row tiles (consecutive workgroups share a tile of w, read once from memory),
// y over column tiles (both grid-stride).
//
// WARPS_K > 1 (the decode rows' form, few rows): the workgroup is WARPS_K groups of WARPS_M x
// WARPS_N subgroups, group g multiplying the slices g, g + WARPS_K, ... into accumulators of its
// own, each staged in a region of its own; at the end the groups' tiles are added in group order.
// Few rows make few tiles: splitting k puts more loads in flight on each tile. A row's sums depend
// on BK and WARPS_K, never on BM or the rows: every variant with the same two gives each row the
// same bits whatever the other rows (the rows form's batch invariance).
//
// K_SETS > 1 (the rows form's 64-row tile, many rows): the k groups' order kept in one group of
// subgroups. Slice s of each round goes to accumulator set s and its sums of squares to set s's, the
// slices staged one after another; at the end the sets are added in set order, as WARPS_K groups'
// tiles are: so each row gets the bits of the WARPS_K = K_SETS form (its 16-row tile), with each
// weight slice staged once for 64 rows, not 4 times (4 groups would stage 64 KiB, past the 48).
//
// Splits (with BINDING_SCRATCH, the rows form): gl_NumWorkGroups.z workgroups share a tile, split s
// walking the slice rounds s, s + splits, ... (the host picks splits from n and k alone, so that a
// product of few tiles still fills the device). Each leaves its groups' sum (and each row's sum of
// x * x) in scratch and counts itself in; the last to arrive adds the splits' parts in split order,
// runs the epilogue and zeroes the count. Scratch: SPLIT_COUNTS counts (tile tn * ntm + tm's at its
// index, the same places whatever the rows, so that no dispatch's parts overwrite another's counts),
// then per tile and split BM x BN sums and BM sums of squares. The splits too depend on n and k only: a row's bits still never
// depend on the rows.
#extension GL_GOOGLE_include_directive : require  // glslc implies it; glslangValidator does not
#extension GL_EXT_control_flow_attributes : enable
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#include "kernel_matmul.glsl"

// x and w seen 16 bytes at a time (rows start on 16-byte boundaries: k % 8 == 0)
layout(std430, set = 0, binding = BINDING_X) readonly buffer X4 { vec4 x4[]; };
#if !defined(QBLOCK)
layout(std430, set = 0, binding = BINDING_W) readonly buffer W4 { uvec4 w4[]; };
#endif
#if defined(PROLOGUE_RMSNORM)
layout(std430, set = 0, binding = BINDING_NORM_WEIGHT) readonly buffer N4 { vec4 norm4[]; };
#endif
#if defined(BINDING_SCRATCH)
// coherent: the last split of a tile reads what the others wrote, past its own cache
layout(std430, set = 0, binding = BINDING_SCRATCH) coherent buffer Scratch { uint scratch[]; };
#define PART (BM * BN + BM)  // floats of a split's part of a tile: its sums, then its rows' sums of squares
shared uint arrived;
#endif

#ifndef WARPS_K
#define WARPS_K 1
#endif
#ifndef K_SETS
#define K_SETS 1
#endif
#if WARPS_K > 1 && K_SETS > 1
#error "matmul_coop.comp: k groups in subgroups or in accumulator sets, not both"
#endif
#define KG (uint(WARPS_K) * uint(K_SETS))  // the k groups of a row's sums: slices g, g + KG, ... in group g
#define GROUP (uint(WG_SIZE) / uint(WARPS_K))  // invocations of a group (WARPS_M x WARPS_N subgroups)
#define BM (uint(WARPS_M) * uint(FM) * 16u)
#define BN (uint(WARPS_N) * uint(FN) * 16u)
#define CHUNKS_PER_ROW (uint(BK) / 8u)
#define RS (CHUNKS_PER_ROW + 1u)  // uvec4 per staged row: BK halves and 16 bytes of padding
#define A_PER (BM * CHUNKS_PER_ROW / GROUP)  // chunks of x per invocation and slice
#define B_PER (BN * CHUNKS_PER_ROW / GROUP)
#if defined(QBLOCK)
#define W_PARTS 2u  // w's hi and lo rows
#else
#define W_PARTS 1u
#endif
#define STAGE ((2u * BM + W_PARTS * BN) * RS)  // uvec4 of the staged slice: x's hi rows, x's lo rows, w's rows (hi, lo)
#define LO (BM * RS)  // where a slice's x lo rows start
#define WS (2u * BM * RS)  // where a slice's w rows start
#define OS (BN / 4u + 1u)  // uvec4 per row of the staged output tile (4 floats each, one of padding)
#define TILE (BM * OS)  // uvec4 of one group's output tile

#if (WARPS_M * FM * 2 * BK * WARPS_K) % WG_SIZE != 0 || (WARPS_N * FN * 2 * BK * WARPS_K) % WG_SIZE != 0
#error "matmul_coop.comp: every invocation loads whole chunks of both slices"
#endif

// each group's slice; after the k loop, each group's output tile
shared uvec4 smem[uint(WARPS_K) * max(STAGE, TILE)];
#if defined(PROLOGUE_RMSNORM)
shared float chunk_ss[KG * BM * CHUNKS_PER_ROW];  // sum(x * x) of each loader's chunks of a row
#endif

#define ACC coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>

// the slice being prefetched, as loaded: the arithmetic on it (prologue, split, dequantizing) waits
// for store_slice, after the math on the current slice, so that the loads' latency hides behind it
vec4 xa[A_PER];  // each chunk's first 4 values of x (silu_mul: of gate)
vec4 xb[A_PER];  // and its last 4
#if defined(PROLOGUE_SILU_MUL)
vec4 ua[A_PER];  // up's
vec4 ub[A_PER];
#endif
#if defined(PROLOGUE_RMSNORM)
vec4 na[A_PER];  // norm_weight's
vec4 nb[A_PER];
#endif
#if defined(QBLOCK)
#if BK % 32 != 0
#error "matmul_coop.comp: block weights need whole 32-value blocks in a slice"
#endif
QRaw8 wq8[B_PER];
uint wvalid;  // bit i: w chunk i lies within the matrix (else read in bounds and staged as zeros)
#else
uvec4 wr[B_PER];
#endif
float ss[uint(K_SETS) * A_PER];  // per accumulator set

uvec4 pack8(vec4 a, vec4 b) {
    return uvec4(packHalf2x16(a.xy), packHalf2x16(a.zw), packHalf2x16(b.xy), packHalf2x16(b.zw));
}

#define HI_MASK 0xFFFFE000u  // f32 bits of x's 11 significant bits (f16's)

// 8 values (a, b) as f16 parts hi and lo = x - hi (see the header)
void split8(vec4 a, vec4 b, out uvec4 hi, out uvec4 lo) {
    precise vec4 ha = uintBitsToFloat(floatBitsToUint(a) & uvec4(HI_MASK));
    precise vec4 hb = uintBitsToFloat(floatBitsToUint(b) & uvec4(HI_MASK));
    precise vec4 la = a - ha;
    precise vec4 lb = b - hb;
    hi = pack8(ha, hb);
    lo = pack8(la, lb);
}

void load_slice(uint k0, uint m0, uint j0, uint t) {
    uint k = p.k;
    [[unroll]] for (uint i = 0u; i < A_PER; ++i) {
        uint q = t + GROUP * i;
        uint row = m0 + q / CHUNKS_PER_ROW;
        uint kk = k0 + (q % CHUNKS_PER_ROW) * 8u;
        xa[i] = vec4(0.0);
        xb[i] = vec4(0.0);
#if defined(PROLOGUE_SILU_MUL)
        ua[i] = vec4(0.0);
        ub[i] = vec4(0.0);
#endif
#if defined(PROLOGUE_RMSNORM)
        na[i] = vec4(0.0);
        nb[i] = vec4(0.0);
#endif
        if (row < p.rows && kk < k) {
#if defined(PROLOGUE_SILU_MUL)
            uint at = (row * 2u * k + kk) / 4u;
            ua[i] = x4[at + k / 4u];
            ub[i] = x4[at + k / 4u + 1u];
#else
            uint at = (row * k + kk) / 4u;
#endif
            xa[i] = x4[at];
            xb[i] = x4[at + 1u];
#if defined(PROLOGUE_RMSNORM)
            na[i] = norm4[kk / 4u];
            nb[i] = norm4[kk / 4u + 1u];
#endif
        }
    }
#if defined(QBLOCK)
    wvalid = 0u;
#endif
    [[unroll]] for (uint i = 0u; i < B_PER; ++i) {
        uint q = t + GROUP * i;
        uint row = j0 + q / CHUNKS_PER_ROW;
        uint kk = k0 + (q % CHUNKS_PER_ROW) * 8u;
#if defined(QBLOCK)
        wq8[i] = qraw8(min(row, p.n - 1u) * (k / QBLOCK) * QBYTES, min(kk, k - 8u));
        wvalid |= row < p.n && kk < k ? 1u << i : 0u;
#else
        uvec4 v = uvec4(0u);
        if (row < p.n && kk < k) {
            v = w4[(row * k + kk) / 8u];
        }
        wr[i] = v;
#endif
    }
}

void store_slice(uint base, uint t, uint set) {
    [[unroll]] for (uint i = 0u; i < A_PER; ++i) {
        uint q = t + GROUP * i;
        vec4 a = xa[i];
        vec4 b = xb[i];
#if defined(PROLOGUE_SILU_MUL)
        a = a / (1.0 + exp(-a)) * ua[i];
        b = b / (1.0 + exp(-b)) * ub[i];
#endif
#if defined(PROLOGUE_RMSNORM)
        ss[set * A_PER + i] += dot(a, a) + dot(b, b);
        a *= na[i];
        b *= nb[i];
#endif
        uint at = base + (q / CHUNKS_PER_ROW) * RS + q % CHUNKS_PER_ROW;
        uvec4 hi;
        uvec4 lo;
        split8(a, b, hi, lo);
        smem[at] = hi;
        smem[at + LO] = lo;
    }
    [[unroll]] for (uint i = 0u; i < B_PER; ++i) {
        uint q = t + GROUP * i;
        uint at = base + WS + (q / CHUNKS_PER_ROW) * RS + q % CHUNKS_PER_ROW;
#if defined(QBLOCK)
        vec4 a;
        vec4 b;
        qvalues8(wq8[i], (q % CHUNKS_PER_ROW) * 8u, a, b);  // the chunk's place in its block: BK % 32 == 0
        if ((wvalid & (1u << i)) == 0u) {
            a = vec4(0.0);
            b = vec4(0.0);
        }
        uvec4 hi;
        uvec4 lo;
        split8(a, b, hi, lo);
        smem[at] = hi;
        smem[at + BN * RS] = lo;  // w's lo rows follow its hi rows
#elif defined(WDTYPE_BF16)
        uvec4 v = wr[i];
        smem[at] = pack8(vec4(unpack_bf16x2(v.x), unpack_bf16x2(v.y)), vec4(unpack_bf16x2(v.z), unpack_bf16x2(v.w)));
#else
        smem[at] = wr[i];
#endif
    }
}

// element e (4 adjacent sums) of the staged tile: the k groups' tiles added in group order
vec4 tile_sum(uint e) {
    uint r = e / (BN / 4u);
    vec4 y = uintBitsToFloat(smem[r * OS + e % (BN / 4u)]);
    [[unroll]] for (uint h = 1u; h < uint(WARPS_K); ++h) {
        y += uintBitsToFloat(smem[h * max(STAGE, TILE) + r * OS + e % (BN / 4u)]);
    }
    return y;
}

#if defined(PROLOGUE_RMSNORM)
float row_sq(uint r) {  // sum(x * x) of the tile's row r over the slices staged here
    float sq = 0.0;
    [[unroll]] for (uint h = 0u; h < KG; ++h) {
        [[unroll]] for (uint q = 0u; q < CHUNKS_PER_ROW; ++q) {
            sq += chunk_ss[(h * BM + r) * CHUNKS_PER_ROW + q];
        }
    }
    return sq;
}
#endif

void main() {
    uint t = gl_LocalInvocationIndex % GROUP;  // the loader's index in its group
    uint g = gl_LocalInvocationIndex / GROUP;  // its group: the slices it stages
    uint gs = gl_SubgroupID / uint(WARPS_M * WARPS_N);  // the subgroup's group: the slices it multiplies
    uint sg = gl_SubgroupID % uint(WARPS_M * WARPS_N);
    uint wm = sg / uint(WARPS_N);
    uint wn = sg % uint(WARPS_N);
    uint region = gs * max(STAGE, TILE);
    uint rows = p.rows;
    uint n = p.n;
    uint k = p.k;
    uint ntm = (rows + BM - 1u) / BM;
    uint ntn = (n + BN - 1u) / BN;

    for (uint tn = gl_WorkGroupID.y; tn < ntn; tn += gl_NumWorkGroups.y) {
        for (uint tm = gl_WorkGroupID.x; tm < ntm; tm += gl_NumWorkGroups.x) {
            uint m0 = tm * BM;
            uint j0 = tn * BN;
            ACC acc[K_SETS * FM * FN];
            [[unroll]] for (uint i = 0u; i < uint(K_SETS * FM * FN); ++i) {
                acc[i] = ACC(0.0);
            }
            [[unroll]] for (uint i = 0u; i < uint(K_SETS) * A_PER; ++i) {
                ss[i] = 0.0;
            }
#if defined(BINDING_SCRATCH)
            uint first = gl_WorkGroupID.z * KG * uint(BK);  // this split's rounds of slices
            uint step = gl_NumWorkGroups.z * KG * uint(BK);
#else
            uint first = 0u;
            uint step = KG * uint(BK);
#endif
            load_slice(first + g * uint(BK), m0, j0, t);

            // every group walks the same number of steps (barriers); a slice past k stages zeros
            for (uint k0 = first; k0 < k; k0 += step) {
                [[unroll]] for (uint set = 0u; set < uint(K_SETS); ++set) {
                    store_slice(g * max(STAGE, TILE), t, set);
                    barrier();
                    uint next = set + 1u < uint(K_SETS) ? k0 + (set + 1u) * uint(BK) : k0 + step;
                    if (set + 1u < uint(K_SETS) || next < k) {
                        load_slice(next + g * uint(BK), m0, j0, t);  // in flight during the math below
                    }
                    [[unroll]] for (uint kk = 0u; kk < CHUNKS_PER_ROW; kk += 2u) {  // 16 deep, in uvec4 columns
                        coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> a_hi[FM];
                        coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> a_lo[FM];
                        coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> b[FN];
#if defined(QBLOCK)
                        coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> b_lo[FN];
#endif
                        [[unroll]] for (uint i = 0u; i < uint(FM); ++i) {
                            uint at = region + (wm * uint(FM) + i) * 16u * RS + kk;
                            coopMatLoad(a_hi[i], smem, at, RS, gl_CooperativeMatrixLayoutRowMajor);
                            coopMatLoad(a_lo[i], smem, at + LO, RS, gl_CooperativeMatrixLayoutRowMajor);
                        }
                        [[unroll]] for (uint j = 0u; j < uint(FN); ++j) {
                            uint at = region + WS + (wn * uint(FN) + j) * 16u * RS + kk;
                            coopMatLoad(b[j], smem, at, RS, gl_CooperativeMatrixLayoutColumnMajor);
#if defined(QBLOCK)
                            coopMatLoad(b_lo[j], smem, at + BN * RS, RS, gl_CooperativeMatrixLayoutColumnMajor);
#endif
                        }
                        // all hi products, then all lo (into the same accumulators): consecutive products
                        // go to different ones; block weights: then x hi times w lo
                        [[unroll]] for (uint i = 0u; i < uint(FM); ++i) {
                            [[unroll]] for (uint j = 0u; j < uint(FN); ++j) {
                                uint a = set * uint(FM * FN) + i * uint(FN) + j;
                                acc[a] = coopMatMulAdd(a_hi[i], b[j], acc[a]);
                            }
                        }
                        [[unroll]] for (uint i = 0u; i < uint(FM); ++i) {
                            [[unroll]] for (uint j = 0u; j < uint(FN); ++j) {
                                uint a = set * uint(FM * FN) + i * uint(FN) + j;
                                acc[a] = coopMatMulAdd(a_lo[i], b[j], acc[a]);
                            }
                        }
#if defined(QBLOCK)
                        [[unroll]] for (uint i = 0u; i < uint(FM); ++i) {
                            [[unroll]] for (uint j = 0u; j < uint(FN); ++j) {
                                uint a = set * uint(FM * FN) + i * uint(FN) + j;
                                acc[a] = coopMatMulAdd(a_hi[i], b_lo[j], acc[a]);
                            }
                        }
#endif
                    }
                    barrier();  // every subgroup is done reading the slice before the next is stored
                }
            }
            [[unroll]] for (uint set = 1u; set < uint(K_SETS); ++set) {  // the sets in set order
                [[unroll]] for (uint i = 0u; i < uint(FM * FN); ++i) {
                    acc[i] = acc[i] + acc[set * uint(FM * FN) + i];
                }
            }

            [[unroll]] for (uint i = 0u; i < uint(FM); ++i) {
                [[unroll]] for (uint j = 0u; j < uint(FN); ++j) {
                    uint at = region + (wm * uint(FM) + i) * 16u * OS + (wn * uint(FN) + j) * 4u;
                    coopMatStore(acc[i * uint(FN) + j], smem, at, OS, gl_CooperativeMatrixLayoutRowMajor);
                }
            }
#if defined(PROLOGUE_RMSNORM)
            [[unroll]] for (uint set = 0u; set < uint(K_SETS); ++set) {
                [[unroll]] for (uint i = 0u; i < A_PER; ++i) {
                    chunk_ss[(g + set) * BM * CHUNKS_PER_ROW + t + GROUP * i] = ss[set * A_PER + i];
                }
            }
#endif
            barrier();
#if defined(BINDING_SCRATCH)
            uint splits = gl_NumWorkGroups.z;
            uint tile = tn * ntm + tm;
            uint parts = SPLIT_COUNTS + tile * splits * PART;  // the tile's first part
            if (splits > 1u) {
                uint mine = parts + gl_WorkGroupID.z * PART;
                for (uint e = gl_LocalInvocationIndex; e < BM * (BN / 4u); e += uint(WG_SIZE)) {
                    vec4 y = tile_sum(e);
                    [[unroll]] for (uint c = 0u; c < 4u; ++c) {
                        scratch[mine + 4u * e + c] = floatBitsToUint(y[c]);
                    }
                }
#if defined(PROLOGUE_RMSNORM)
                for (uint r = gl_LocalInvocationIndex; r < BM; r += uint(WG_SIZE)) {
                    scratch[mine + BM * BN + r] = floatBitsToUint(row_sq(r));
                }
#endif
                memoryBarrierBuffer();  // the part is visible before its count
                barrier();
                if (gl_LocalInvocationIndex == 0u) {
                    arrived = atomicAdd(scratch[tile], 1u);
                }
                barrier();
                if (arrived != splits - 1u) {
                    continue;  // uniform: the last split to arrive finishes the tile
                }
                memoryBarrierBuffer();
                if (gl_LocalInvocationIndex == 0u) {
                    scratch[tile] = 0u;  // for the next dispatch
                }
            }
#endif

            for (uint e = gl_LocalInvocationIndex; e < BM * (BN / 4u); e += uint(WG_SIZE)) {
                uint r = e / (BN / 4u);
                uint m = m0 + r;
                uint col = j0 + 4u * (e % (BN / 4u));
                if (m >= rows || col >= n) {
                    continue;
                }
#if defined(BINDING_SCRATCH)
                vec4 y = vec4(0.0);
                float sq = 0.0;
                if (splits > 1u) {  // the splits' parts in split order
                    for (uint h = 0u; h < splits; ++h) {
                        [[unroll]] for (uint c = 0u; c < 4u; ++c) {
                            y[c] += uintBitsToFloat(scratch[parts + h * PART + 4u * e + c]);
                        }
#if defined(PROLOGUE_RMSNORM)
                        sq += uintBitsToFloat(scratch[parts + h * PART + BM * BN + r]);
#endif
                    }
                } else {
                    y = tile_sum(e);
#if defined(PROLOGUE_RMSNORM)
                    sq = row_sq(r);
#endif
                }
#else
                vec4 y = tile_sum(e);
#if defined(PROLOGUE_RMSNORM)
                float sq = row_sq(r);
#endif
#endif
#if defined(PROLOGUE_RMSNORM)
                y *= 1.0 / sqrt(sq / float(k) + p.eps);
#endif
#if BIAS
                y += vec4(bias[col], bias[min(col + 1u, n - 1u)], bias[min(col + 2u, n - 1u)], bias[min(col + 3u, n - 1u)]);
#endif
#if defined(EPILOGUE_SILU_MUL)
                // (gate, up) column pairs: n is even and col a multiple of 4
                [[unroll]] for (uint h = 0u; h < 4u; h += 2u) {
                    if (col + h + 1u < n) {
                        float v = y[h] / (1.0 + exp(-y[h])) * y[h + 1u];
                        uint o = m * p.out_stride + p.out_offset + (col + h) / 2u;
#else
                [[unroll]] for (uint h = 0u; h < 4u; ++h) {
                    if (col + h < n) {
                        float v = y[h];
                        uint o = m * p.out_stride + p.out_offset + col + h;
#endif
#if ACCUMULATE
                        v += out_[o];
#endif
                        out_[o] = v;
                    }
                }
            }
            barrier();  // smem and chunk_ss are reused by the next tile
        }
    }
}
