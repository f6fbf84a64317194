// sample.comp's workgroup reductions (included after its shared declarations: red[], cand_prob[]):
// every invocation calls them, every invocation gets the result.


vec4 wg_sum4(vec4 v) {
#if SUBGROUPS
    vec4 s = subgroupAdd(v);
    if (gl_SubgroupInvocationID == 0u) {
        red[gl_SubgroupID] = floatBitsToUint(s);
    }
    barrier();
    vec4 total = vec4(0.0);
    for (uint i = 0u; i < gl_NumSubgroups; ++i) {
        total += uintBitsToFloat(red[i]);
    }
    barrier();
    return total;
#else
    uint t = gl_LocalInvocationIndex;
    red[t] = floatBitsToUint(v);
    barrier();
    for (uint s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            red[t] = floatBitsToUint(uintBitsToFloat(red[t]) + uintBitsToFloat(red[t + s]));
        }
        barrier();
    }
    vec4 total = uintBitsToFloat(red[0]);
    barrier();
    return total;
#endif
}

// (largest key, smallest index among the entries with that key)
uvec2 wg_best(uint key, uint idx) {
#if SUBGROUPS
    uint mk = subgroupMax(key);
    uint mi = subgroupMin(key == mk ? idx : NO_INDEX);
    if (gl_SubgroupInvocationID == 0u) {
        red[gl_SubgroupID] = uvec4(mk, mi, 0u, 0u);
    }
    barrier();
    uvec2 best = red[0].xy;
    for (uint i = 1u; i < gl_NumSubgroups; ++i) {
        uvec2 o = red[i].xy;
        if (o.x > best.x || (o.x == best.x && o.y < best.y)) {
            best = o;
        }
    }
    barrier();
    return best;
#else
    uint t = gl_LocalInvocationIndex;
    red[t] = uvec4(key, idx, 0u, 0u);
    barrier();
    for (uint s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            uvec2 a = red[t].xy;
            uvec2 o = red[t + s].xy;
            if (o.x > a.x || (o.x == a.x && o.y < a.y)) {
                red[t] = uvec4(o, 0u, 0u);
            }
        }
        barrier();
    }
    uvec2 best = red[0].xy;
    barrier();
    return best;
#endif
}

// exclusive prefix sum over the invocations (in invocation order); `total` gets the sum
float wg_scan(float v, out float total) {
#if SUBGROUPS
    float ex = subgroupExclusiveAdd(v);
    float s = subgroupAdd(v);
    if (gl_SubgroupInvocationID == 0u) {
        red[gl_SubgroupID].x = floatBitsToUint(s);
    }
    barrier();
    float before = 0.0;
    float all = 0.0;
    for (uint i = 0u; i < gl_NumSubgroups; ++i) {
        float x = uintBitsToFloat(red[i].x);
        before += i < gl_SubgroupID ? x : 0.0;
        all += x;
    }
    barrier();
    total = all;
    return before + ex;
#else
    uint t = gl_LocalInvocationIndex;
    cand_prob[t] = v;
    barrier();
    for (uint off = 1u; off < WG_SIZE; off <<= 1u) {
        float add = t >= off ? cand_prob[t - off] : 0.0;
        barrier();
        cand_prob[t] += add;
        barrier();
    }
    float ex = t > 0u ? cand_prob[t - 1u] : 0.0;
    total = cand_prob[WG_SIZE - 1u];
    barrier();
    return ex;
#endif
}
