#version 450
// Paged KV-cache write. One workgroup per row (grid-stride). A row whose cache row a later
// row also writes is skipped, so the last writer wins as in the reference; positions past
// the slot's capacity and invalid table entries are dropped. The f16 cache holds pairs
// packed in uint words (kv_dim is even).
#include "kernel_kv_write.glsl"
#include "paged.glsl"

shared uint later_duplicate;

void main() {
    uint t = gl_LocalInvocationIndex;
    for (uint r = gl_WorkGroupID.x; r < p.rows; r += gl_NumWorkGroups.x) {
        uint row = cache_row(seqs[r], positions[r]);
        if (t == 0u) {
            later_duplicate = 0u;
        }
        barrier();
        for (uint s = r + 1u + t; s < p.rows; s += WG_SIZE) {
            if (row != NO_ROW && cache_row(seqs[s], positions[s]) == row) {
                atomicOr(later_duplicate, 1u);
            }
        }
        barrier();
        bool skip = later_duplicate != 0u || row == NO_ROW;
        barrier();
        if (skip) {
            continue;
        }
        uint src_k = r * p.stride + p.k_offset;
        uint src_v = r * p.stride + p.v_offset;
#if defined(CACHE_DTYPE_F16)
        uint half_dim = p.kv_dim / 2u;
        uint dst = row * half_dim;
        for (uint j = t; j < half_dim; j += WG_SIZE) {
            k_cache[dst + j] = pack_f16x2(src[src_k + 2u * j], src[src_k + 2u * j + 1u]);
            v_cache[dst + j] = pack_f16x2(src[src_v + 2u * j], src[src_v + 2u * j + 1u]);
        }
#else
        uint dst = row * p.kv_dim;
        for (uint j = t; j < p.kv_dim; j += WG_SIZE) {
            k_cache[dst + j] = src[src_k + j];
            v_cache[dst + j] = src[src_v + j];
        }
#endif
    }
}
