// Workgroup-wide reductions over a 1-D workgroup of WG_SIZE (a power of two) invocations.
// Every invocation of the workgroup must call them (uniform control flow); each gets the result.
// With SUBGROUPS: subgroup operations, then one shared slot per subgroup.
#ifndef REDUCE_GLSL
#define REDUCE_GLSL

shared float reduce_f[WG_SIZE];

float wg_sum(float v) {
#if SUBGROUPS
    float s = subgroupAdd(v);
    if (gl_SubgroupInvocationID == 0u) {  // not subgroupElect(): wgpu's translator lacks it
        reduce_f[gl_SubgroupID] = s;
    }
    barrier();
    float total = 0.0;
    for (uint i = 0u; i < gl_NumSubgroups; ++i) {
        total += reduce_f[i];
    }
    barrier();
    return total;
#else
    uint t = gl_LocalInvocationIndex;
    reduce_f[t] = v;
    barrier();
    for (uint s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            reduce_f[t] += reduce_f[t + s];
        }
        barrier();
    }
    float total = reduce_f[0];
    barrier();
    return total;
#endif
}

#endif  // REDUCE_GLSL
