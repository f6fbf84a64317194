#version 450
// Causal grouped-query attention over the paged KV cache, one workgroup per (row, head)
// (grid x over heads, y over rows, both grid-stride); every invocation of the workgroup
// works on it, so a decode step (one row) still spreads over n_heads workgroups.
//
// The keys 0 .. L-1 (logical positions of the row's slot, L = min(positions[r] + 1, capacity))
// go by in chunks of WG_SIZE: each invocation looks up the cache row of one key of the chunk
// (paged.glsl: a table entry; the 16 or so invocations of a block read the same word, one
// transaction) and keeps it in krow[] for the value pass; a key without a block (an invalid
// entry) scores nothing and weighs 0, and a row without any key gets zeros. Each invocation
// scores its key (q pre-scaled by `scale`, kept in shared
// memory), the chunk's maximum updates the running maximum m (online softmax: the running
// sum l and the output accumulators are rescaled by exp(m_old - m_new)), each invocation
// turns its score into exp(s - m), and then the invocations accumulate p * v: invocation t
// owns one UE-element unit of the head (t % units) for every G-th key of the chunk
// (G = WG_SIZE / units groups). At the end the G groups' accumulators and sums are added.
// The chunk maximum: subgroupMax and one shared slot per subgroup with SUBGROUPS, else every
// invocation scans the chunk's scores in shared memory.
// K and V loads are batched (BATCH units of a key, VBATCH keys of a unit) so several are
// in flight per invocation. Shared memory: O(WG_SIZE * UE), independent of the context.
//
// Units (UE elements, one load each): VEC: 16 bytes (8 f16 or 4 f32; needs head_dim % UE
// == 0, the variant's `when`), otherwise 2 elements (a packed f16 word or a vec2 of f32;
// head_dim is even). Own declarations with vector element types; bindings and push
// constants as in the generated kernel_attention.glsl.
//
// DECODE_ROPE_KV: the `decode_attention` kernel (bindings and push constants as in
// kernel_decode_attention.glsl; rows over the grid's z, grid-stride). q, k and v are read from
// the row's fused qkv row; each workgroup
// rotates q (pre-scaled, into qs) and its kv head's k (rope, with common.glsl's cos_sin as
// the rope kernel) and packs k and v into shared memory as cache units, rounded as the cache
// stores them (k_new, v_new), so that key p = positions[r] scores and accumulates exactly
// like a cached row: its loads come from there instead of the cache. The first workgroup
// of each kv head's group (h % group == 0) alone writes those units to position p's cache
// row; the others never read that row from the cache, so nothing races (nor do other rows:
// they are of other slots and cannot see it). p past the capacity or without a block: no
// new row, nothing written, the cached keys only (as kv_write + attention).
// Its keys are split into slices of whole chunks over the grid's y (a workgroup per row, head
// and slice; how many depends on the capacity and the row's own position, never on the other
// rows, so a row's result is the same in any batch): up to one chunk, slice 0 alone does the head as above; longer, each slice scores
// its keys and combine_slices() merges them (a 4k context on the H200: 64 us a layer on one
// workgroup per head).
// KEY_LANES (decode_attention, 16-byte f16 units, subgroups): the chunk loop of the `_keys`
// variant: a key per group of `units` invocations instead of one per invocation, its K and
// V read in one round trip (variants_heavy.py has the measurements).
#extension GL_EXT_control_flow_attributes : enable
#if defined(KEY_LANES) && KEY_LANES
#extension GL_KHR_shader_subgroup_shuffle : require
#endif
#include "common.glsl"

layout(local_size_x = WG_X, local_size_y = WG_Y, local_size_z = WG_Z) in;

#ifndef DECODE_ROPE_KV
#define DECODE_ROPE_KV 0
#endif

layout(push_constant) uniform Params {
    uint rows;
    uint n_heads;
    uint n_kv_heads;
    uint head_dim;
    uint q_stride;  // decode_attention: the qkv row's stride
    uint block_size;
    uint blocks_per_seq;
    uint n_blocks;
    uint n_seqs;
    float scale;
} p;

#if defined(CACHE_DTYPE_F16)
#if VEC
#define UNIT uvec4
#define UE_N 8
#else
#define UNIT uint
#define UE_N 2
#endif
#else
#if VEC
#define UNIT vec4
#define UE_N 4
#else
#define UNIT vec2
#define UE_N 2
#endif
#endif

#define UE uint(UE_N)  // elements per unit
#ifndef KEY_LANES
#define KEY_LANES 0
#endif
#if KEY_LANES && (UE_N != 8 || !SUBGROUPS || !DECODE_ROPE_KV)
#error "KEY_LANES: decode_attention's form for 16-byte f16 units, with subgroups"
#endif

#if DECODE_ROPE_KV
// q, then k, then v of each row: qkv (read only, as are positions and inv_freq)
layout(std430, set = 0, binding = BINDING_QKV) readonly buffer Buffer_QKV { float q[]; };
layout(std430, set = 0, binding = BINDING_INV_FREQ) readonly buffer Buffer_INV_FREQ { float inv_freq[]; };
layout(std430, set = 0, binding = BINDING_K_CACHE) buffer Buffer_K_CACHE { UNIT k_cache[]; };
layout(std430, set = 0, binding = BINDING_V_CACHE) buffer Buffer_V_CACHE { UNIT v_cache[]; };
#else
layout(std430, set = 0, binding = BINDING_Q) readonly buffer Buffer_Q { float q[]; };
layout(std430, set = 0, binding = BINDING_K_CACHE) readonly buffer Buffer_K_CACHE { UNIT k_cache[]; };
layout(std430, set = 0, binding = BINDING_V_CACHE) readonly buffer Buffer_V_CACHE { UNIT v_cache[]; };
#endif
layout(std430, set = 0, binding = BINDING_POSITIONS) readonly buffer Buffer_POSITIONS { uint positions[]; };
layout(std430, set = 0, binding = BINDING_SEQS) readonly buffer Buffer_SEQS { uint seqs[]; };
layout(std430, set = 0, binding = BINDING_BLOCK_TABLES) readonly buffer Buffer_BLOCK_TABLES { uint block_tables[]; };
#include "paged.glsl"
#if DECODE_ROPE_KV
// coherent: the last slice of a head reads what the others wrote, past its own cache
layout(std430, set = 0, binding = BINDING_SCRATCH) coherent buffer Buffer_SCRATCH { uint scratch[]; };
#endif
layout(std430, set = 0, binding = BINDING_OUT) writeonly buffer Buffer_OUT { float out_[]; };

#define MAX_HEAD_DIM 256u
#define BATCH 8u   // K units loaded together per key
#define VBATCH 4u  // V rows loaded together per invocation
#define LOWEST -3.0e38  // below any score; a finite stand-in for -inf (see common.glsl)

shared float qs[MAX_HEAD_DIM];
#if SUBGROUPS
shared float chunk_red[WG_SIZE / 4];  // one slot per subgroup (subgroups of at least 4)
#else
shared float score[WG_SIZE];
#endif
shared float prob[WG_SIZE];
shared uint krow[WG_SIZE];  // the chunk's cache rows (NO_ROW: no key)
shared float part[WG_SIZE * UE];  // the groups' accumulators, then their sums
shared float part_l[WG_SIZE];
#if DECODE_ROPE_KV
shared uint arrived;  // slices of this head done before this one
shared UNIT k_new[MAX_HEAD_DIM / UE];  // row p of this head's kv head, as the cache would hold it
shared UNIT v_new[MAX_HEAD_DIM / UE];
#endif

// a unit as 8 floats (.a = elements 0-3, .b = 4-7; only the first UE are meaningful)
struct Unit8 {
    vec4 a;
    vec4 b;
};

Unit8 expand(UNIT u) {
    Unit8 r;
#if defined(CACHE_DTYPE_F16) && VEC
    r.a = vec4(unpackHalf2x16(u.x), unpackHalf2x16(u.y));
    r.b = vec4(unpackHalf2x16(u.z), unpackHalf2x16(u.w));
#elif defined(CACHE_DTYPE_F16)
    r.a = vec4(unpackHalf2x16(u), 0.0, 0.0);
    r.b = vec4(0.0);
#elif VEC
    r.a = u;
    r.b = vec4(0.0);
#else
    r.a = vec4(u, 0.0, 0.0);
    r.b = vec4(0.0);
#endif
    return r;
}

#if DECODE_ROPE_KV
// element d of a head starting at q[base], rotated as the rope kernel does (rotate-half),
// cs = cos_sin of element d's angle
float rotated(uint base, uint d, uint half_dim, vec2 cs) {
    float x = q[base + d];
    if (d < half_dim) {
        return x * cs.x - q[base + d + half_dim] * cs.y;
    }
    return x * cs.x + q[base + d - half_dim] * cs.y;
}

// The new row goes to k_new / v_new and the caches a 4-byte word at a time (EPW elements,
// rounded as kv_write stores them), so that many invocations share the f16 rounding.
#if defined(CACHE_DTYPE_F16)
#define EPW 2u
#define WORD uint
#else
#define EPW 1u
#define WORD float
#endif
#if VEC
#define WPU_N 4  // words per unit
#elif defined(CACHE_DTYPE_F16)
#define WPU_N 1
#else
#define WPU_N 2
#endif
#define WPU uint(WPU_N)
#if WPU_N == 1
#define SET_WORD(units_, i, c, w) units_[i] = (w)
#else
#define SET_WORD(units_, i, c, w) units_[i][c] = (w)
#endif

// element d of the kv head starting at q[kb0], rotated as the rope kernel does
float rotated_k(uint kb0, uint d, uint half_dim, float fpos) {
    return rotated(kb0, d, half_dim, cos_sin(fpos * inv_freq[d < half_dim ? d : d - half_dim]));
}

// unit i of key/value row j of this head's kv head (cache element `at`): the new row, j ==
// fresh, from shared memory
#define K_UNIT(j, at, i) ((j) == fresh ? k_new[i] : k_cache[at])
#define V_UNIT(j, at, i) ((j) == fresh ? v_new[i] : v_cache[at])
#else
#define K_UNIT(j, at, i) k_cache[at]
#define V_UNIT(j, at, i) v_cache[at]
#endif

// a[base + g * stride] summed over g < G in four independent chains, so the shared loads
// overlap instead of each waiting for the add before it (~1 us of a decode step, measured)
#define SUM_GROUPS(name, a)                                              \
    float name(uint base, uint stride, uint G) {                         \
        vec4 s4 = vec4(0.0);                                             \
        uint g = 0u;                                                     \
        for (; g + 4u <= G; g += 4u) {                                   \
            s4 += vec4(a[base + g * stride], a[base + (g + 1u) * stride], \
                       a[base + (g + 2u) * stride], a[base + (g + 3u) * stride]); \
        }                                                                \
        for (; g < G; ++g) {                                             \
            s4.x += a[base + g * stride];                                \
        }                                                                \
        return (s4.x + s4.y) + (s4.z + s4.w);                            \
    }
SUM_GROUPS(sum_part, part)
SUM_GROUPS(sum_part_l, part_l)

#if DECODE_ROPE_KV
#include "attention_slices.glsl"
#endif

void main() {
    uint t = gl_LocalInvocationIndex;
    uint hd = p.head_dim;
    uint group = p.n_heads / p.n_kv_heads;
    uint kv_units = p.n_kv_heads * hd / UE;  // units per cache row
    uint units = hd / UE;                    // units per head
    uint G = WG_SIZE / units;                // accumulating groups (units <= 128 <= WG_SIZE)
    uint grp = t / units;
    uint u = t % units;
    bool accumulating = grp < G;

    uint last = p.block_size * p.blocks_per_seq - 1u;  // a slot's last position
#if DECODE_ROPE_KV
    for (uint r = gl_WorkGroupID.z; r < p.rows; r += gl_NumWorkGroups.z) {  // grid y: the slices of the keys
        uint pos = positions[r];
        uint seq = seqs[r];
        uint L = min(pos, last) + 1u;
        // slices of `span` keys (whole chunks), a workgroup each; `live` of them hold keys
        uint slices = gl_NumWorkGroups.y;
        uint span = max(1u, (L + slices * WG_SIZE - 1u) / (slices * WG_SIZE)) * WG_SIZE;
        uint live = (L + span - 1u) / span;
        if (gl_WorkGroupID.y >= live) {
            continue;  // the same for every head: nothing to do
        }
        uint begin = gl_WorkGroupID.y * span;
        uint end = min(begin + span, L);
        // the key read from k_new / v_new (and written to the caches); none without a cache row
        uint fresh_row = cache_row(seq, pos);
        uint fresh = fresh_row != NO_ROW ? pos : NO_ROW;
        float fpos = float(pos);
        uint half_dim = hd / 2u;
        uint q_row = r * p.q_stride;
        uint k_off = q_row + p.n_heads * hd;
        uint v_off = k_off + p.n_kv_heads * hd;
#else
    for (uint r = gl_WorkGroupID.y; r < p.rows; r += gl_NumWorkGroups.y) {
        uint seq = seqs[r];
        uint L = min(positions[r], last) + 1u;
        uint begin = 0u;
        uint end = L;
#endif
        for (uint h = gl_WorkGroupID.x; h < p.n_heads; h += gl_NumWorkGroups.x) {
            uint kv0 = (h / group) * units;  // this head's first unit within a cache row
#if DECODE_ROPE_KV
            uint kb0 = k_off + (h / group) * hd;
            uint vb0 = v_off + (h / group) * hd;
            for (uint d = t; d < hd; d += WG_SIZE) {
                vec2 cs = cos_sin(fpos * inv_freq[d < half_dim ? d : d - half_dim]);
                qs[d] = rotated(q_row + h * hd, d, half_dim, cs) * p.scale;
            }
            // the new k (rotated) and v, a word per invocation: no barrier before the packing
            bool writer = fresh != NO_ROW && h % group == 0u && fresh >= begin && fresh < end;
            for (uint w = t; w < hd / EPW; w += WG_SIZE) {
                uint d = w * EPW;
#if defined(CACHE_DTYPE_F16)
                WORD kw = pack_f16x2(rotated_k(kb0, d, half_dim, fpos), rotated_k(kb0, d + 1u, half_dim, fpos));
                WORD vw = pack_f16x2(q[vb0 + d], q[vb0 + d + 1u]);
#else
                WORD kw = rotated_k(kb0, d, half_dim, fpos);
                WORD vw = q[vb0 + d];
#endif
                uint i = w / WPU;
                uint c = w % WPU;
                SET_WORD(k_new, i, c, kw);
                SET_WORD(v_new, i, c, vw);
                if (writer) {
                    SET_WORD(k_cache, fresh_row * kv_units + kv0 + i, c, kw);
                    SET_WORD(v_cache, fresh_row * kv_units + kv0 + i, c, vw);
                }
            }
#else
            for (uint d = t; d < hd; d += WG_SIZE) {
                qs[d] = q[r * p.q_stride + h * hd + d] * p.scale;
            }
#endif
#if KEY_LANES
            // the first chunk's cache rows, looked up while the prologue's loads are in flight
            krow[t] = begin + t < end ? cache_row(seq, begin + t) : NO_ROW;
#endif
            barrier();

            float m = LOWEST;
            float l = 0.0;
            vec4 acc_a = vec4(0.0);
            vec4 acc_b = vec4(0.0);
#if KEY_LANES
            // A key per group (its `units` invocations, side by side in one subgroup): each reads
            // its unit of the key's K and V rows, the score is summed across the group by shuffles
            // (every invocation of the group gets the same bits), and each group keeps its own
            // online softmax over keys grp, grp + G, ... of a chunk, KL_KEYS of them in flight.
            // No barrier within a chunk; the groups' maxima are brought to one at the end.
            vec4 q_a = vec4(qs[u * UE], qs[u * UE + 1u], qs[u * UE + 2u], qs[u * UE + 3u]);
            vec4 q_b = vec4(qs[u * UE + 4u], qs[u * UE + 5u], qs[u * UE + 6u], qs[u * UE + 7u]);
            for (uint c = begin; c < end; c += WG_SIZE) {
                if (c != begin) {
                    barrier();  // every group is done with the previous chunk's rows
                    krow[t] = c + t < end ? cache_row(seq, c + t) : NO_ROW;
                    barrier();
                }
                for (uint i0 = 0u; i0 < WG_SIZE; i0 += KL_KEYS * G) {  // the same trips for every group
                    UNIT kb[KL_KEYS];
                    UNIT vb[KL_KEYS];
                    [[unroll]] for (uint b = 0u; b < KL_KEYS; ++b) {
                        uint i = i0 + b * G + grp;
                        uint row = i < WG_SIZE ? krow[i] : NO_ROW;
                        kb[b] = row != NO_ROW ? K_UNIT(c + i, row * kv_units + kv0 + u, u) : UNIT(0);
                        vb[b] = row != NO_ROW ? V_UNIT(c + i, row * kv_units + kv0 + u, u) : UNIT(0);
                    }
                    float sc[KL_KEYS];
                    float mc = LOWEST;
                    [[unroll]] for (uint b = 0u; b < KL_KEYS; ++b) {
                        Unit8 kk = expand(kb[b]);
                        float s = dot(kk.a, q_a) + dot(kk.b, q_b);
                        for (uint o = 1u; o < units; o <<= 1u) {
                            s += subgroupShuffleXor(s, o);
                        }
                        uint i = i0 + b * G + grp;
                        sc[b] = i < WG_SIZE && krow[i] != NO_ROW ? s : LOWEST;
                        mc = max(mc, sc[b]);
                    }
                    float m_new = max(m, mc);
                    float corr = exp(m - m_new);
                    acc_a *= corr;
                    acc_b *= corr;
                    l *= corr;
                    [[unroll]] for (uint b = 0u; b < KL_KEYS; ++b) {
                        float pr = sc[b] != LOWEST ? exp(sc[b] - m_new) : 0.0;
                        Unit8 vv = expand(vb[b]);
                        l += pr;
                        acc_a += pr * vv.a;
                        acc_b += pr * vv.b;
                    }
                    m = m_new;
                }
            }
            // the groups' sums and outputs brought to the workgroup's maximum
            float mg = subgroupMax(m);
            if (gl_SubgroupInvocationID == 0u) {
                chunk_red[gl_SubgroupID] = mg;
            }
            barrier();
            float m_wg = chunk_red[0];
            for (uint i = 1u; i < gl_NumSubgroups; ++i) {
                m_wg = max(m_wg, chunk_red[i]);
            }
            float f = exp(m - m_wg);
            acc_a *= f;
            acc_b *= f;
            l *= f;
            m = m_wg;
#else
            for (uint c = begin; c < end; c += WG_SIZE) {
                uint j = c + t;
                uint row = j < end ? cache_row(seq, j) : NO_ROW;
                float s = LOWEST;
                if (row != NO_ROW) {
                    uint base = row * kv_units + kv0;
                    vec4 sa = vec4(0.0);
                    vec4 sb = vec4(0.0);
                    for (uint i0 = 0u; i0 < units; i0 += BATCH) {
                        UNIT kb[BATCH];  // the batch's loads first, all in flight together
                        [[unroll]] for (uint b = 0u; b < BATCH; ++b) {
                            kb[b] = i0 + b < units ? K_UNIT(j, base + i0 + b, i0 + b) : UNIT(0);
                        }
                        [[unroll]] for (uint b = 0u; b < BATCH; ++b) {
                            Unit8 kk = expand(kb[b]);
                            uint d = min(i0 + b, units - 1u) * UE;  // past the head: kk is 0
#if UE_N == 8
                            sa += kk.a * vec4(qs[d], qs[d + 1u], qs[d + 2u], qs[d + 3u]);
                            sb += kk.b * vec4(qs[d + 4u], qs[d + 5u], qs[d + 6u], qs[d + 7u]);
#elif UE_N == 4
                            sa += kk.a * vec4(qs[d], qs[d + 1u], qs[d + 2u], qs[d + 3u]);
#else
                            sa.xy += kk.a.xy * vec2(qs[d], qs[d + 1u]);
#endif
                        }
                    }
                    s = dot(sa, vec4(1.0)) + dot(sb, vec4(1.0));
                }
                uint cnt = min(WG_SIZE, end - c);
#if SUBGROUPS
                float sm = subgroupMax(s);
                if (gl_SubgroupInvocationID == 0u) {
                    chunk_red[gl_SubgroupID] = sm;
                }
                barrier();
                float mc = chunk_red[0];
                for (uint i = 1u; i < gl_NumSubgroups; ++i) {
                    mc = max(mc, chunk_red[i]);
                }
#else
                score[t] = s;
                barrier();
                float mc = score[0];
                for (uint i = 1u; i < cnt; ++i) {
                    mc = max(mc, score[i]);
                }
#endif
                float m_new = max(m, mc);
                float corr = exp(m - m_new);
                prob[t] = row != NO_ROW ? exp(s - m_new) : 0.0;
                krow[t] = row;
                barrier();
                if (accumulating) {
                    acc_a *= corr;
                    acc_b *= corr;
                    l *= corr;
                    for (uint i0 = grp; i0 < cnt; i0 += VBATCH * G) {
                        UNIT vb[VBATCH];  // the batch's loads first
                        [[unroll]] for (uint b = 0u; b < VBATCH; ++b) {
                            uint i = i0 + b * G;
                            uint vrow = i < cnt ? krow[i] : NO_ROW;
                            vb[b] = vrow != NO_ROW ? V_UNIT(c + i, vrow * kv_units + kv0 + u, u) : UNIT(0);
                        }
                        [[unroll]] for (uint b = 0u; b < VBATCH; ++b) {
                            uint i = min(i0 + b * G, cnt - 1u);
                            float pr = i0 + b * G < cnt ? prob[i] : 0.0;
                            Unit8 vv = expand(vb[b]);
                            l += pr;
                            acc_a += pr * vv.a;
                            acc_b += pr * vv.b;
                        }
                    }
                }
                m = m_new;
            }
#endif

            // add up the groups
            if (accumulating) {
                uint o = grp * hd + u * UE;
                part[o] = acc_a.x;
                part[o + 1u] = acc_a.y;
#if UE_N >= 4
                part[o + 2u] = acc_a.z;
                part[o + 3u] = acc_a.w;
#endif
#if UE_N == 8
                part[o + 4u] = acc_b.x;
                part[o + 5u] = acc_b.y;
                part[o + 6u] = acc_b.z;
                part[o + 7u] = acc_b.w;
#endif
                if (u == 0u) {
                    part_l[grp] = l;
                }
            }
            barrier();
            float lt = sum_part_l(0u, 1u, G);
#if DECODE_ROPE_KV
            if (live > 1u) {
                combine_slices(h, r, live, m, lt);
            } else
#endif
            {
                for (uint d = t; d < hd; d += WG_SIZE) {
                    out_[(r * p.n_heads + h) * hd + d] = lt > 0.0 ? sum_part(d, hd, G) / lt : 0.0;  // no key: zeros
                }
            }
            barrier();  // shared memory is reused by the next (row, head)
        }
    }
}
