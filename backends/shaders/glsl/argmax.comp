#version 450
// out[r] = the smallest index of the largest x[r]; NaN counts as -inf (so it never beats a
// number, and an all-NaN row gives 0, as in the reference). One workgroup per row, each
// invocation with UNROLL loads in flight (a decode step's vocabulary, 49-256k logits, is one
// row: the pass is bound by how many loads one workgroup keeps going). Values compare as
// order_key() uints: exact, and no infinite constants (see common.glsl); (key, index) is a
// total order, so the order the elements are visited in does not matter.
// VEC (rows of n % 4 == 0, the variant's `when`): 16-byte loads, four times the bytes in
// flight per load; the one-workgroup pass is bound by exactly that (32 -> 6 us at 128k logits
// on the H200). Own declarations then, with the generated header's bindings and push constants.
#extension GL_EXT_control_flow_attributes : enable
#if VEC
#include "common.glsl"
layout(local_size_x = WG_X, local_size_y = WG_Y, local_size_z = WG_Z) in;
layout(push_constant) uniform Params {
    uint rows;
    uint n;
} p;
layout(std430, set = 0, binding = BINDING_X) readonly buffer Buffer_X { vec4 x4[]; };
layout(std430, set = 0, binding = BINDING_OUT) writeonly buffer Buffer_OUT { uint out_[]; };
#define EPL 4u  // elements per load
#define ELEM(v, e) (v)[e]
#else
#include "kernel_argmax.glsl"
#define EPL 1u
#define ELEM(v, e) (v)
#endif

#define NO_INDEX 0xFFFFFFFFu
#define UNROLL 8u

shared uint best_k[WG_SIZE];
shared uint best_i[WG_SIZE];

// (ka, ia) beats (kb, ib)? Every real element beats the initial (0, NO_INDEX).
bool beats(uint ka, uint ia, uint kb, uint ib) {
    return ka > kb || (ka == kb && ia < ib);
}

void main() {
    uint n = p.n;
    uint t = gl_LocalInvocationIndex;
    for (uint r = gl_WorkGroupID.x; r < p.rows; r += gl_NumWorkGroups.x) {
        uint bk = 0u;
        uint bi = NO_INDEX;
        uint loads = n / EPL;  // per row
        for (uint c0 = t; c0 < loads; c0 += UNROLL * WG_SIZE) {
#if VEC
            vec4 v[UNROLL];  // the round's loads first, all in flight together
            [[unroll]] for (uint u = 0u; u < UNROLL; ++u) {
                v[u] = x4[r * loads + min(c0 + u * WG_SIZE, loads - 1u)];
            }
#else
            float v[UNROLL];
            [[unroll]] for (uint u = 0u; u < UNROLL; ++u) {
                v[u] = x[r * n + min(c0 + u * WG_SIZE, n - 1u)];
            }
#endif
            [[unroll]] for (uint u = 0u; u < UNROLL; ++u) {
                uint c = c0 + u * WG_SIZE;
                [[unroll]] for (uint e = 0u; e < EPL; ++e) {
                    uint i = c * EPL + e;
                    uint k = order_key(ELEM(v[u], e));
                    if (c < loads && beats(k, i, bk, bi)) {
                        bk = k;
                        bi = i;
                    }
                }
            }
        }
#if SUBGROUPS
        uint mk = subgroupMax(bk);
        uint mi = subgroupMin(bk == mk ? bi : NO_INDEX);
        if (gl_SubgroupInvocationID == 0u) {  // not subgroupElect(): wgpu's translator lacks it
            best_k[gl_SubgroupID] = mk;
            best_i[gl_SubgroupID] = mi;
        }
        barrier();
        if (t == 0u) {
            uint k = best_k[0];
            uint idx = best_i[0];
            for (uint s = 1u; s < gl_NumSubgroups; ++s) {
                if (beats(best_k[s], best_i[s], k, idx)) {
                    k = best_k[s];
                    idx = best_i[s];
                }
            }
            out_[r] = idx == NO_INDEX ? 0u : idx;
        }
        barrier();
#else
        best_k[t] = bk;
        best_i[t] = bi;
        barrier();
        for (uint s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
            if (t < s && beats(best_k[t + s], best_i[t + s], best_k[t], best_i[t])) {
                best_k[t] = best_k[t + s];
                best_i[t] = best_i[t + s];
            }
            barrier();
        }
        if (t == 0u) {
            out_[r] = best_i[0] == NO_INDEX ? 0u : best_i[0];
        }
        barrier();
#endif
    }
}
