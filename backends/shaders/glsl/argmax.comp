#version 450
// out[r] = the smallest index of the largest x[r]; NaN counts as -inf (so it never beats a
// number, and an all-NaN row gives 0, as in the reference). One workgroup per row.
// Values compare as order_key() uints: exact, and no infinite constants (see common.glsl).
#include "kernel_argmax.glsl"

#define NO_INDEX 0xFFFFFFFFu

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
        for (uint i = t; i < n; i += WG_SIZE) {
            uint k = order_key(x[r * n + i]);
            if (beats(k, i, bk, bi)) {
                bk = k;
                bi = i;
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
