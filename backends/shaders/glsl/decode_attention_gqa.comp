#version 450
// The `decode_attention` kernel (as attention.comp's DECODE_ROPE_KV form: read its header) with
// one workgroup per (row, block of q heads of one kv head, key slice): each K and V unit of the
// kv head is loaded once for up to GQ q heads of its group (group = n_heads / n_kv_heads heads
// in ceil(group / GQ) blocks of nearly equal size), where attention.comp loads it once per head.
// Grid x over the kv heads' blocks, y over the key slices, z over the rows (all grid-stride).
//
// Per chunk of WG_SIZE keys: invocation t scores key t against every head of the block (q rotated
// and pre-scaled in qs4), the chunk maxima per head update each head's running maximum (online
// softmax), and the V pass accumulates p * v for every head from one load of each unit
// (invocation t owns unit t % units of every G-th key, as attention.comp, with GQ heads'
// accumulators). At the end the G groups' accumulators are added PASS_HEADS heads at a time
// (shared memory: PASS_HEADS * WG_SIZE * UE floats). The new row (rope of k, packing, writing the
// caches) is the first block's of each kv head; slices merge through scratch per (row, q head)
// (attention_slices.glsl), the last slice of a block merging each of its heads.
//
// A row's sums depend on the head counts and head_dim (the block's heads, G, PASS_HEADS) and on
// its own position and capacity (the slices), never on the other rows: batch-invariant.
#extension GL_EXT_control_flow_attributes : enable
#include "common.glsl"

layout(local_size_x = WG_X, local_size_y = WG_Y, local_size_z = WG_Z) in;

#include "attention_units.glsl"

#define QS_HEAD (MAX_HEAD_DIM / 4u)  // vec4s of a head in qs4

shared vec4 qs4[GQ * QS_HEAD];  // the block's q heads, rotated and pre-scaled
#if SUBGROUPS
shared float chunk_red[GQ * (WG_SIZE / 4u)];  // per head, a slot per subgroup (subgroups of >= 4)
#else
shared float score[GQ * WG_SIZE];
#endif
shared float prob[GQ * WG_SIZE];  // per head, the chunk's weights
shared uint krow[WG_SIZE];  // the chunk's cache rows (NO_ROW: no key)
shared float part[PASS_HEADS * WG_SIZE * UE];  // PASS_HEADS heads' group accumulators at a time
shared float part_l[PASS_HEADS * WG_SIZE];
shared uint arrived;  // slices of this block done before this one

SUM_GROUPS(sum_part, part)
SUM_GROUPS(sum_part_l, part_l)

#include "attention_slices.glsl"

void main() {
    uint t = gl_LocalInvocationIndex;
    uint hd = p.head_dim;
    uint group = p.n_heads / p.n_kv_heads;
    uint blocks = (group + GQ - 1u) / GQ;       // blocks of a kv head
    uint per = (group + blocks - 1u) / blocks;  // heads of a block (the last may have fewer)
    uint kv_units = p.n_kv_heads * hd / UE;     // units per cache row
    uint units = hd / UE;                       // units per head
    uint G = WG_SIZE / units;                   // accumulating groups (units <= 128 <= WG_SIZE)
    uint grp = t / units;
    uint u = t % units;
    bool accumulating = grp < G;
    uint last = p.block_size * p.blocks_per_seq - 1u;  // a slot's last position

    for (uint r = gl_WorkGroupID.z; r < p.rows; r += gl_NumWorkGroups.z) {
        uint pos = positions[r];
        uint seq = seqs[r];
        uint L = min(pos, last) + 1u;
        // slices of `span` keys (whole chunks), a workgroup each; `live` of them hold keys
        uint slices = gl_NumWorkGroups.y;
        uint span = max(1u, (L + slices * WG_SIZE - 1u) / (slices * WG_SIZE)) * WG_SIZE;
        uint live = (L + span - 1u) / span;
        if (gl_WorkGroupID.y >= live) {
            continue;  // the same for every block: nothing to do
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
        for (uint hb = gl_WorkGroupID.x; hb < p.n_kv_heads * blocks; hb += gl_NumWorkGroups.x) {
            uint kvh = hb / blocks;
            uint b = hb % blocks;
            uint h0 = kvh * group + b * per;  // the block's first head
            uint nh = min(per, group - b * per);
            uint kv0 = kvh * units;  // the kv head's first unit within a cache row
            for (uint i = t; i < nh * hd; i += WG_SIZE) {
                uint g = i / hd;
                uint d = i % hd;
                vec2 cs = cos_sin(fpos * inv_freq[d < half_dim ? d : d - half_dim]);
                qs4[g * QS_HEAD + d / 4u][d % 4u] = rotated(q_row + (h0 + g) * hd, d, half_dim, cs) * p.scale;
            }
            bool writer = fresh != NO_ROW && b == 0u && fresh >= begin && fresh < end;
            pack_new_row(k_off + kvh * hd, v_off + kvh * hd, fpos, writer, fresh_row * kv_units + kv0);
            barrier();

            float m[GQ];
            float l[GQ];
            vec4 acc_a[GQ];
            vec4 acc_b[GQ];
            [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                m[g] = LOWEST;
                l[g] = 0.0;
                acc_a[g] = vec4(0.0);
                acc_b[g] = vec4(0.0);
            }
            for (uint c = begin; c < end; c += WG_SIZE) {
                uint j = c + t;
                uint row = j < end ? cache_row(seq, j) : NO_ROW;
                float s[GQ];
                [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                    s[g] = LOWEST;
                }
                if (row != NO_ROW) {
                    uint base = row * kv_units + kv0;
                    vec4 sa[GQ];
                    [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                        sa[g] = vec4(0.0);
                    }
                    for (uint i0 = 0u; i0 < units; i0 += BATCH) {
                        UNIT kb[BATCH];  // the batch's loads first, all in flight together
                        [[unroll]] for (uint k = 0u; k < BATCH; ++k) {
                            kb[k] = i0 + k < units ? K_UNIT(j, base + i0 + k, i0 + k) : UNIT(0);
                        }
                        [[unroll]] for (uint k = 0u; k < BATCH; ++k) {
                            Unit8 kk = expand(kb[k]);
                            uint d = min(i0 + k, units - 1u) * UE;  // past the head: kk is 0
                            [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                                if (g < nh) {
                                    vec4 qa = qs4[g * QS_HEAD + d / 4u];
#if UE_N == 8
                                    sa[g] = fma(kk.b, qs4[g * QS_HEAD + d / 4u + 1u], fma(kk.a, qa, sa[g]));
#elif UE_N == 4
                                    sa[g] = fma(kk.a, qa, sa[g]);
#else
                                    sa[g].xy = fma(kk.a.xy, (d & 2u) == 0u ? qa.xy : qa.zw, sa[g].xy);
#endif
                                }
                            }
                        }
                    }
                    [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                        s[g] = dot(sa[g], vec4(1.0));
                    }
                }
                uint cnt = min(WG_SIZE, end - c);
                float corr[GQ];
                [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                    corr[g] = 1.0;
                }
#if SUBGROUPS
                [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                    if (g < nh) {
                        float sm = subgroupMax(s[g]);
                        if (gl_SubgroupInvocationID == 0u) {
                            chunk_red[g * (WG_SIZE / 4u) + gl_SubgroupID] = sm;
                        }
                    }
                }
                barrier();
                [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                    if (g < nh) {
                        float mc = chunk_red[g * (WG_SIZE / 4u)];
                        for (uint i = 1u; i < gl_NumSubgroups; ++i) {
                            mc = max(mc, chunk_red[g * (WG_SIZE / 4u) + i]);
                        }
#else
                [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                    score[g * WG_SIZE + t] = s[g];
                }
                barrier();
                [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                    if (g < nh) {
                        float mc = score[g * WG_SIZE];
                        for (uint i = 1u; i < cnt; ++i) {
                            mc = max(mc, score[g * WG_SIZE + i]);
                        }
#endif
                        float m_new = max(m[g], mc);
                        corr[g] = exp(m[g] - m_new);
                        prob[g * WG_SIZE + t] = row != NO_ROW ? exp(s[g] - m_new) : 0.0;
                        m[g] = m_new;
                    }
                }
                krow[t] = row;
                barrier();
                if (accumulating) {
                    [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                        acc_a[g] *= corr[g];
                        acc_b[g] *= corr[g];
                        l[g] *= corr[g];
                    }
                    for (uint i0 = grp; i0 < cnt; i0 += VBATCH * G) {
                        UNIT vb[VBATCH];  // the batch's loads first
                        [[unroll]] for (uint k = 0u; k < VBATCH; ++k) {
                            uint i = i0 + k * G;
                            uint vrow = i < cnt ? krow[i] : NO_ROW;
                            vb[k] = vrow != NO_ROW ? V_UNIT(c + i, vrow * kv_units + kv0 + u, u) : UNIT(0);
                        }
                        [[unroll]] for (uint k = 0u; k < VBATCH; ++k) {
                            uint i = min(i0 + k * G, cnt - 1u);
                            bool in_chunk = i0 + k * G < cnt;
                            Unit8 vv = expand(vb[k]);
                            [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                                if (g < nh) {
                                    float pr = in_chunk ? prob[g * WG_SIZE + i] : 0.0;
                                    l[g] += pr;
                                    acc_a[g] += pr * vv.a;
                                    acc_b[g] += pr * vv.b;
                                }
                            }
                        }
                    }
                }
            }

            // add up the groups, PASS_HEADS heads at a time: the outputs, or this slice's share
            for (uint g0 = 0u; g0 < nh; g0 += PASS_HEADS) {
                uint n_pass = min(PASS_HEADS, nh - g0);
                [[unroll]] for (uint g = 0u; g < GQ; ++g) {
                    if (g >= g0 && g < g0 + n_pass) {
                        if (accumulating) {
                            uint o = ((grp * PASS_HEADS) + g - g0) * hd + u * UE;
                            part[o] = acc_a[g].x;
                            part[o + 1u] = acc_a[g].y;
#if UE_N >= 4
                            part[o + 2u] = acc_a[g].z;
                            part[o + 3u] = acc_a[g].w;
#endif
#if UE_N == 8
                            part[o + 4u] = acc_b[g].x;
                            part[o + 5u] = acc_b[g].y;
                            part[o + 6u] = acc_b[g].z;
                            part[o + 7u] = acc_b[g].w;
#endif
                            if (u == 0u) {
                                part_l[grp * PASS_HEADS + g - g0] = l[g];
                            }
                        }
                        if (live > 1u && t == 0u) {
                            scratch[scratch_slice(r, h0 + g)] = floatBitsToUint(m[g]);
                        }
                    }
                }
                barrier();
                for (uint i = t; i < n_pass * hd; i += WG_SIZE) {
                    uint g = i / hd;
                    uint d = i % hd;
                    uint h = h0 + g0 + g;
                    float lt = sum_part_l(g, PASS_HEADS, G);
                    float o = sum_part(i, PASS_HEADS * hd, G);
                    if (live > 1u) {
                        uint mine = scratch_slice(r, h);
                        scratch[mine + 2u + d] = floatBitsToUint(o);
                        if (d == 0u) {
                            scratch[mine + 1u] = floatBitsToUint(lt);
                        }
                    } else {
                        out_[(r * p.n_heads + h) * hd + d] = lt > 0.0 ? o / lt : 0.0;  // no key: zeros
                    }
                }
                barrier();  // part is reused by the next pass
            }
            if (live > 1u && last_to_arrive(r, h0, live)) {
                for (uint g = 0u; g < nh; ++g) {
                    merge_slices(r, h0 + g, live);
                }
            }
            barrier();  // shared memory is reused by the next (row, block)
        }
    }
}
