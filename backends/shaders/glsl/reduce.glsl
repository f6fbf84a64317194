// Workgroup-wide reductions over a 1-D workgroup of WG_SIZE (a power of two) invocations.
// Every invocation of the workgroup must call them (uniform control flow); each gets the result.
// With SUBGROUPS: subgroup operations, then one shared slot per subgroup.
#ifndef REDUCE_GLSL
#define REDUCE_GLSL

shared float reduce_f[WG_SIZE];

// the sum, or with `largest` the maximum (a constant at every call: the branches fold away)
float wg_reduce(float v, bool largest) {
#if SUBGROUPS
    float s = largest ? subgroupMax(v) : subgroupAdd(v);
    if (gl_SubgroupInvocationID == 0u) {  // not subgroupElect(): wgpu's translator lacks it
        reduce_f[gl_SubgroupID] = s;
    }
    barrier();
    float total = largest ? reduce_f[0] : 0.0;
    for (uint i = largest ? 1u : 0u; i < gl_NumSubgroups; ++i) {
        total = largest ? max(total, reduce_f[i]) : total + reduce_f[i];
    }
    barrier();
    return total;
#else
    uint t = gl_LocalInvocationIndex;
    reduce_f[t] = v;
    barrier();
    for (uint s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            reduce_f[t] = largest ? max(reduce_f[t], reduce_f[t + s]) : reduce_f[t] + reduce_f[t + s];
        }
        barrier();
    }
    float total = reduce_f[0];
    barrier();
    return total;
#endif
}

float wg_sum(float v) {
    return wg_reduce(v, false);
}

float wg_max(float v) {
    return wg_reduce(v, true);
}

#endif  // REDUCE_GLSL
