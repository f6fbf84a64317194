#version 450
// out[r] = the smallest index of the largest x[r]; NaN counts as -inf (so it never beats a
// number, and an all-NaN row gives 0, as in the reference). Values compare as order_key()
// uints: exact, and no infinite constants (see common.glsl); (key, index) is a total order,
// so the order the elements are visited in does not matter. Each invocation keeps UNROLL
// loads in flight.
// SLICES workgroups per row (grid x), each over a contiguous slice: a decode step's one row
// of 49-256k logits is too much for one multiprocessor (an exact compare per element: 128k
// logits took 23 us on one workgroup of the H200). Each slice leaves its best in `scratch` and
// counts itself in; the last slice to arrive (no workgroup waits for another) picks the row's
// best, zeroes scratch and writes out.
// VEC (rows of n % 4 == 0, the variant's `when`): 16-byte loads.
// Own declarations (vector element types, a coherent scratch), with the generated header's
// bindings and push constants.
#extension GL_EXT_control_flow_attributes : enable
#include "common.glsl"
layout(local_size_x = WG_X, local_size_y = WG_Y, local_size_z = WG_Z) in;
layout(push_constant) uniform Params {
    uint rows;
    uint n;
} p;
#if VEC
layout(std430, set = 0, binding = BINDING_X) readonly buffer Buffer_X { vec4 x4[]; };
#else
layout(std430, set = 0, binding = BINDING_X) readonly buffer Buffer_X { float x[]; };
#endif
// coherent: the last slice reads what the others wrote, past its own multiprocessor's cache
layout(std430, set = 0, binding = BINDING_SCRATCH) coherent buffer Buffer_SCRATCH { uint scratch[]; };
layout(std430, set = 0, binding = BINDING_OUT) writeonly buffer Buffer_OUT { uint out_[]; };
#if VEC
#define EPL 4u  // elements per load
#define ELEM(v, e) (v)[e]
#else
#define EPL 1u
#define ELEM(v, e) (v)
#endif

#define NO_INDEX 0xFFFFFFFFu
#define UNROLL 8u

shared uint best_k[WG_SIZE];
shared uint best_i[WG_SIZE];
shared uint arrived;  // slices of this row done before this one

// (ka, ia) beats (kb, ib)? Every real element beats the initial (0, NO_INDEX).
bool beats(uint ka, uint ia, uint kb, uint ib) {
    return ka > kb || (ka == kb && ia < ib);
}

// the workgroup's best (key, index) into invocation 0's bk, bi
void reduce(inout uint bk, inout uint bi) {
#if SUBGROUPS
    uint mk = subgroupMax(bk);
    uint mi = subgroupMin(bk == mk ? bi : NO_INDEX);
    if (gl_SubgroupInvocationID == 0u) {  // not subgroupElect(): wgpu's translator lacks it
        best_k[gl_SubgroupID] = mk;
        best_i[gl_SubgroupID] = mi;
    }
    barrier();
    if (gl_LocalInvocationIndex == 0u) {
        bk = best_k[0];
        bi = best_i[0];
        for (uint s = 1u; s < gl_NumSubgroups; ++s) {
            if (beats(best_k[s], best_i[s], bk, bi)) {
                bk = best_k[s];
                bi = best_i[s];
            }
        }
    }
#else
    uint t = gl_LocalInvocationIndex;
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
    bk = best_k[0];
    bi = best_i[0];
#endif
    barrier();  // best_k and best_i are free again
}

void main() {
    uint n = p.n;
    uint t = gl_LocalInvocationIndex;
    uint loads = n / EPL;  // per row
    uint per = (loads + SLICES - 1u) / SLICES;
    uint begin = min(gl_WorkGroupID.x * per, loads);
    uint end = min(begin + per, loads);
    for (uint r = gl_WorkGroupID.y; r < p.rows; r += gl_NumWorkGroups.y) {
        uint bk = 0u;
        uint bi = NO_INDEX;
        for (uint c0 = begin + t; c0 < end; c0 += UNROLL * WG_SIZE) {
#if VEC
            vec4 v[UNROLL];  // the round's loads first, all in flight together
            [[unroll]] for (uint u = 0u; u < UNROLL; ++u) {
                v[u] = x4[r * loads + min(c0 + u * WG_SIZE, end - 1u)];
            }
#else
            float v[UNROLL];
            [[unroll]] for (uint u = 0u; u < UNROLL; ++u) {
                v[u] = x[r * n + min(c0 + u * WG_SIZE, end - 1u)];
            }
#endif
            [[unroll]] for (uint u = 0u; u < UNROLL; ++u) {
                uint c = c0 + u * WG_SIZE;
                [[unroll]] for (uint e = 0u; e < EPL; ++e) {
                    uint i = c * EPL + e;
                    uint k = order_key(ELEM(v[u], e));
                    if (c < end && beats(k, i, bk, bi)) {
                        bk = k;
                        bi = i;
                    }
                }
            }
        }
        reduce(bk, bi);
        // scratch row r: [slices arrived, SLICES keys, SLICES indices]
        uint base = r * (1u + 2u * SLICES);
        if (t == 0u) {
            scratch[base + 1u + gl_WorkGroupID.x] = bk;
            scratch[base + 1u + SLICES + gl_WorkGroupID.x] = bi;
            memoryBarrierBuffer();  // the slice's best is visible before its count
            arrived = atomicAdd(scratch[base], 1u);
        }
        barrier();
        if (arrived == SLICES - 1u) {  // the last slice: every other one has written its best
            memoryBarrierBuffer();
            bk = 0u;
            bi = NO_INDEX;
            for (uint s = t; s < SLICES; s += WG_SIZE) {
                uint k = scratch[base + 1u + s];
                uint i = scratch[base + 1u + SLICES + s];
                if (beats(k, i, bk, bi)) {
                    bk = k;
                    bi = i;
                }
                scratch[base + 1u + s] = 0u;
                scratch[base + 1u + SLICES + s] = 0u;
            }
            reduce(bk, bi);
            if (t == 0u) {
                scratch[base] = 0u;
                out_[r] = bi == NO_INDEX ? 0u : bi;
            }
        }
        barrier();  // `arrived` is reused by the next row
    }
}
