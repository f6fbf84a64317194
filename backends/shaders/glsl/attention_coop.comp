#version 450
// attention, cooperative-matrix (tensor core) form for prefill: causal grouped-query attention
// over the paged f16 KV cache, head_dim HEAD_DIM (64), flash-attention style, on devices reporting
// the subgroup-scope 16 x 16 x 16 product f16 x f16 + f32 -> f32 (VK_KHR_cooperative_matrix).
// Compiled by the pinned glslangValidator (build.py); never given to wgpu.
//
// A workgroup of 4 subgroups of 32 takes 64 query rows of one head, 16 rows a subgroup. Its rows
// may be of several slots (seqs): it takes those slots one at a time, in increasing order (each
// found as the least slot above the last one among its rows: a prompt's rows give one or two), and
// walks the logical positions its rows of that slot see, 0 .. keys - 1, in tiles of 64, staged in
// shared memory: each position's cache row found through the slot's block table (paged.glsl; a
// tile may span several blocks), K and V rows of the head's kv group, zero for a position without
// a block (an invalid entry) or past `keys`. Per tile a subgroup computes its 16 x 64 scores
// S = q k^T with the matrix unit, stores them to its own shared region, and its 32 invocations
// (two a row, 32 columns each) apply the scale and the mask (a key counts for a row of this slot
// that sees its position, if the position has a block), update the row's running maximum and sum
// (online softmax), rescale their share of the row's output (in registers, 32 floats) and write
// P = exp(s - max) back as f16; then P v (16 x HEAD_DIM) goes through the matrix unit into fresh
// accumulators, which are stored and added to the registers. Rows of other slots weigh every key
// 0, so their output is unchanged; a subgroup none of whose rows of the slot sees the tile skips it.
// A row that sees no valid position gets zeros. Masked keys weigh exactly 0, so a staged V row
// must be finite: it is, as every staged row is one that some row of the workgroup sees.
// q and P are split into f16 hi + lo parts (as matmul_coop.comp does x: the hi part cut by a bit
// mask, lo = x - hi) whose products go to the same accumulators, so only K and V are rounded, as
// the cache already holds them: f32 scores and weights otherwise.
//
// Shared: the K and V tiles (64 rows of HEAD_DIM halves, padded by 16 bytes), the tile's cache
// rows, and per subgroup one region that holds, in turn, q's hi/lo rows (at the start), S (f32),
// P's hi/lo rows, and the tile's output (f32). Grid: (row tiles, heads); no grid-stride:
// rows / 64 and n_heads are far below the group-count limit.
#extension GL_GOOGLE_include_directive : require  // glslc implies it; glslangValidator does not
#extension GL_EXT_control_flow_attributes : enable
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#include "kernel_attention.glsl"
#include "paged.glsl"

// the caches seen 16 bytes (8 halves) at a time: kv rows are whole multiples of 8 halves
layout(std430, set = 0, binding = BINDING_K_CACHE) readonly buffer K4 { uvec4 k4[]; };
layout(std430, set = 0, binding = BINDING_V_CACHE) readonly buffer V4 { uvec4 v4[]; };

#define D uint(HEAD_DIM)
#define BQ 64u  // query rows a workgroup
#define BKV 64u  // keys a tile
#define DC (D / 8u)  // uvec4 chunks of a head row
#define KS (DC + 1u)  // uvec4 a staged K/V row: HEAD_DIM halves and 16 bytes of padding
#define PS (BKV / 8u + 1u)  // uvec4 a row of P (or q) halves, padded
#define FS ((BKV > D ? BKV : D) / 4u + 2u)  // uvec4 a row of S or the tile's output (f32), padded
#define REGION (16u * (2u * PS > FS ? 2u * PS : FS))  // uvec4 of one subgroup's region
#define LO16 (16u * PS)  // where the lo rows start in a region holding hi/lo halves
#define HALF (D / 2u)  // columns of the output (and keys of a tile, BKV == D) an invocation owns
#define NO_SLOT 0xFFFFFFFFu  // a dead row's slot (>= n_seqs, as any slot that large)

#if HEAD_DIM != 64
#error "attention_coop.comp: HEAD_DIM 64 (BKV == HEAD_DIM: an invocation's keys and columns coincide)"
#endif

shared uvec4 kt[BKV * KS];
shared uvec4 vt[BKV * KS];
shared uvec4 region[4u * REGION];
shared uint tile_rows[BKV];  // the tile's cache rows (NO_ROW: no key there)
shared uint reduced[4];  // one value a subgroup, for workgroup_min

#define ACC coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>
#define MA coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA>
#define MB coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB>
#define HI_MASK 0xFFFFE000u  // f32 bits of a value's 11 significant bits (f16's)
#define NEG_INF uintBitsToFloat(0xFF800000u)

uvec4 pack8(vec4 a, vec4 b) {
    return uvec4(packHalf2x16(a.xy), packHalf2x16(a.zw), packHalf2x16(b.xy), packHalf2x16(b.zw));
}

// 8 values as f16 hi and lo = x - hi, stored to a region's hi row and lo row
void store_split(uint at, vec4 a, vec4 b) {
    precise vec4 ha = uintBitsToFloat(floatBitsToUint(a) & uvec4(HI_MASK));
    precise vec4 hb = uintBitsToFloat(floatBitsToUint(b) & uvec4(HI_MASK));
    precise vec4 la = a - ha;
    precise vec4 lb = b - hb;
    region[at] = pack8(ha, hb);
    region[at + LO16] = pack8(la, lb);
}

// the least v of the workgroup, in every invocation (all of them call it)
uint workgroup_min(uint v) {
    uint least = subgroupMin(v);
    if (gl_SubgroupInvocationID == 0u) {
        reduced[gl_SubgroupID] = least;
    }
    barrier();
    least = min(min(reduced[0], reduced[1]), min(reduced[2], reduced[3]));
    barrier();  // every invocation has read `reduced` before the next call writes it
    return least;
}

void main() {
    uint t = gl_LocalInvocationIndex;
    uint sg = gl_SubgroupID;
    uint lane = gl_SubgroupInvocationID;
    uint h = gl_WorkGroupID.y;
    uint g = h / (p.n_heads / p.n_kv_heads);
    uint kv4 = p.n_kv_heads * DC;  // uvec4 of a cache row
    uint base = sg * REGION;
    uint r = lane / 2u;  // the row this invocation shares with its neighbour
    uint c0 = (lane % 2u) * HALF;  // its first column (of keys in S and P, of head dims in the output)
    uint m = gl_WorkGroupID.x * BQ + sg * 16u + r;
    bool live = m < p.rows;
    uint slot = live ? seqs[m] : NO_SLOT;
    uint last = p.block_size * p.blocks_per_seq - 1u;  // a slot's last position
    uint seen = live ? min(positions[m], last) + 1u : 0u;  // logical positions this row sees, 0 .. seen - 1

    // q's row (hi/lo halves) -> the subgroup's A matrices
    [[unroll]] for (uint c = 0u; c < HALF; c += 8u) {
        vec4 a = vec4(0.0);
        vec4 b = vec4(0.0);
        if (live) {
            uint at = m * p.q_stride + h * D + c0 + c;
            a = vec4(q[at], q[at + 1u], q[at + 2u], q[at + 3u]);
            b = vec4(q[at + 4u], q[at + 5u], q[at + 6u], q[at + 7u]);
        }
        store_split(base + r * PS + (c0 + c) / 8u, a, b);
    }
    subgroupMemoryBarrierShared();
    subgroupBarrier();
    MA q_hi[D / 16u];
    MA q_lo[D / 16u];
    [[unroll]] for (uint d = 0u; d < D / 16u; ++d) {
        coopMatLoad(q_hi[d], region, base + 2u * d, PS, gl_CooperativeMatrixLayoutRowMajor);
        coopMatLoad(q_lo[d], region, base + LO16 + 2u * d, PS, gl_CooperativeMatrixLayoutRowMajor);
    }

    float o[HALF];  // this invocation's share of its row's output
    [[unroll]] for (uint i = 0u; i < HALF; ++i) {
        o[i] = 0.0;
    }
    float row_max = NEG_INF;
    float row_sum = 0.0;

    // the slots of the workgroup's rows in increasing order (the loop is the same in every
    // invocation: `cur` and `keys` are workgroup-wide)
    for (uint above = 0u;;) {
        uint cur = workgroup_min(slot >= above ? slot : NO_SLOT);
        if (cur == NO_SLOT) {
            break;
        }
        above = cur + 1u;
        bool mine = slot == cur;
        // positions seen by this subgroup's rows of the slot, by the workgroup's (none: a slot >= n_seqs)
        uint sg_keys = subgroupMax(mine && cur < p.n_seqs ? seen : 0u);
        uint keys = ~workgroup_min(~sg_keys);

        for (uint j0 = 0u; j0 < keys; j0 += BKV) {
            // stage the tile's K and V rows through the block table (zero where no key)
            for (uint e = t; e < BKV * DC; e += 128u) {
                uint j = e / DC;
                uint c = e % DC;
                uint row = j0 + j < keys ? cache_row(cur, j0 + j) : NO_ROW;
                uvec4 kv = uvec4(0u);
                uvec4 vv = uvec4(0u);
                if (row != NO_ROW) {
                    uint at = row * kv4 + g * DC + c;
                    kv = k4[at];
                    vv = v4[at];
                }
                kt[j * KS + c] = kv;
                vt[j * KS + c] = vv;
                if (c == 0u) {
                    tile_rows[j] = row;
                }
            }
            barrier();

            if (j0 < sg_keys) {  // the same in the whole subgroup: its matrix operations stay uniform
                // S = q k^T: 16 x BKV, f32
                ACC s[BKV / 16u];
                [[unroll]] for (uint jf = 0u; jf < BKV / 16u; ++jf) {
                    s[jf] = ACC(0.0);
                    [[unroll]] for (uint d = 0u; d < D / 16u; ++d) {
                        MB kb;
                        coopMatLoad(kb, kt, jf * 16u * KS + 2u * d, KS, gl_CooperativeMatrixLayoutColumnMajor);
                        s[jf] = coopMatMulAdd(q_hi[d], kb, s[jf]);
                        s[jf] = coopMatMulAdd(q_lo[d], kb, s[jf]);
                    }
                }
                subgroupBarrier();  // every lane is done with the region (q at first, the last tile's output later)
                [[unroll]] for (uint jf = 0u; jf < BKV / 16u; ++jf) {
                    coopMatStore(s[jf], region, base + jf * 4u, FS, gl_CooperativeMatrixLayoutRowMajor);
                }
                subgroupMemoryBarrierShared();
                subgroupBarrier();

                // online softmax over this invocation's 32 keys of its row
                float x[HALF];
                float most_here = NEG_INF;
                [[unroll]] for (uint c = 0u; c < HALF; c += 4u) {
                    vec4 v = uintBitsToFloat(region[base + r * FS + (c0 + c) / 4u]);
                    [[unroll]] for (uint i = 0u; i < 4u; ++i) {
                        uint k = c0 + c + i;  // the key within the tile
                        bool counts = mine && j0 + k < seen && tile_rows[k] != NO_ROW;
                        x[c + i] = counts ? v[i] * p.scale : NEG_INF;
                        most_here = max(most_here, x[c + i]);
                    }
                }
                float new_max = max(row_max, max(most_here, subgroupShuffleXor(most_here, 1u)));
                // a row that sees no key yet keeps -inf: its weights stay 0 (never NaN from -inf - -inf)
                float shift = new_max == NEG_INF ? 0.0 : new_max;
                float alpha = exp(row_max - shift);
                float sum_here = 0.0;
                [[unroll]] for (uint i = 0u; i < HALF; ++i) {
                    x[i] = exp(x[i] - shift);
                    sum_here += x[i];
                    o[i] *= alpha;
                }
                row_sum = row_sum * alpha + sum_here + subgroupShuffleXor(sum_here, 1u);
                row_max = new_max;
                subgroupBarrier();  // every lane has read its scores before P goes over them
                [[unroll]] for (uint c = 0u; c < HALF; c += 8u) {
                    store_split(base + r * PS + (c0 + c) / 8u, vec4(x[c], x[c + 1u], x[c + 2u], x[c + 3u]),
                                vec4(x[c + 4u], x[c + 5u], x[c + 6u], x[c + 7u]));
                }
                subgroupMemoryBarrierShared();
                subgroupBarrier();

                // the tile's output P v: 16 x D, f32
                ACC y[D / 16u];
                [[unroll]] for (uint df = 0u; df < D / 16u; ++df) {
                    y[df] = ACC(0.0);
                }
                [[unroll]] for (uint kk = 0u; kk < BKV / 16u; ++kk) {
                    MA p_hi;
                    MA p_lo;
                    coopMatLoad(p_hi, region, base + 2u * kk, PS, gl_CooperativeMatrixLayoutRowMajor);
                    coopMatLoad(p_lo, region, base + LO16 + 2u * kk, PS, gl_CooperativeMatrixLayoutRowMajor);
                    [[unroll]] for (uint df = 0u; df < D / 16u; ++df) {
                        MB vb;
                        coopMatLoad(vb, vt, kk * 16u * KS + 2u * df, KS, gl_CooperativeMatrixLayoutRowMajor);
                        y[df] = coopMatMulAdd(p_hi, vb, y[df]);
                        y[df] = coopMatMulAdd(p_lo, vb, y[df]);
                    }
                }
                subgroupBarrier();  // every lane is done reading P
                [[unroll]] for (uint df = 0u; df < D / 16u; ++df) {
                    coopMatStore(y[df], region, base + df * 4u, FS, gl_CooperativeMatrixLayoutRowMajor);
                }
                subgroupMemoryBarrierShared();
                subgroupBarrier();
                [[unroll]] for (uint c = 0u; c < HALF; c += 4u) {
                    vec4 v = uintBitsToFloat(region[base + r * FS + (c0 + c) / 4u]);
                    o[c] += v.x;
                    o[c + 1u] += v.y;
                    o[c + 2u] += v.z;
                    o[c + 3u] += v.w;
                }
            }
            barrier();  // every subgroup is done with the K and V tiles before the next are staged
        }
    }

    if (live) {
        float inv = row_sum > 0.0 ? 1.0 / row_sum : 0.0;  // no valid position seen: zeros
        uint at = m * (p.n_heads * D) + h * D + c0;
        [[unroll]] for (uint i = 0u; i < HALF; ++i) {
            out_[at + i] = o[i] * inv;
        }
    }
}
