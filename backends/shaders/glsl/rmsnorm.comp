#version 450
// out[r] = x[r] / sqrt(mean(x[r]**2) + eps) * weight. One workgroup per row (grid-stride).
#include "kernel_rmsnorm.glsl"
#include "reduce.glsl"

void main() {
    uint n = p.n;
    uint t = gl_LocalInvocationIndex;
    for (uint r = gl_WorkGroupID.x; r < p.rows; r += gl_NumWorkGroups.x) {
        uint base = r * n;
        float ss = 0.0;
        for (uint i = t; i < n; i += WG_SIZE) {
            float v = x[base + i];
            ss += v * v;
        }
        float scale = 1.0 / sqrt(wg_sum(ss) / float(n) + p.eps);
        for (uint i = t; i < n; i += WG_SIZE) {
            out_[base + i] = x[base + i] * scale * weight[i];
        }
    }
}
