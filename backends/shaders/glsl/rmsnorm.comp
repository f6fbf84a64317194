#version 450
// out[r] = x[r] / sqrt(mean(x[r]**2) + eps) * weight. One workgroup per row (grid-stride).
//
// The squares are summed of x times s, a power of two that brings max|x[r]| to [0.5, 1), and
// 1 / sqrt(mean(x**2) + eps) taken as s / sqrt(mean((x s)**2) + eps s**2), or 1 / sqrt(eps) where
// eps s**2 overflows (eps then outweighs every square): the same bits as without s wherever neither
// form flushes or overflows (scaling by a power of two is exact), and rows of rms 1e-18 keep their
// small squares on devices that flush subnormals (WGSL allows it: wgpu on an H100 lost ~0.1% of such
// a row's sum, benches/RESULTS.md 2026-12-06 10:26).
#include "kernel_rmsnorm.glsl"
#include "reduce.glsl"

#define FLT_MAX 3.4028235e38

void main() {
    uint n = p.n;
    uint t = gl_LocalInvocationIndex;
    for (uint r = gl_WorkGroupID.x; r < p.rows; r += gl_NumWorkGroups.x) {
        uint base = r * n;
        float m = 0.0;
        for (uint i = t; i < n; i += WG_SIZE) {
            m = max(m, abs(x[base + i]));
        }
        m = wg_max(m);
        // s's biased exponent from m's (not frexp: naga rejects it), s within the normal range;
        // 1 for a row of zeros and for one with an infinity or NaN
        uint be = floatBitsToUint(m) >> 23;
        int e = m == 0.0 || be == 255u ? 0 : clamp(253 - int(be), 1, 253) - 127;
        float s = uintBitsToFloat(uint(e + 127) << 23);  // 2^e
        float ss = 0.0;
        for (uint i = t; i < n; i += WG_SIZE) {
            float v = x[base + i] * s;
            ss += v * v;
        }
        float mean = wg_sum(ss) / float(n);
        // eps s**2 by the exponent: written eps * s * s, NVIDIA's compilers (vulkan and wgpu) took s * s
        // first, whose overflow (rows of rms below ~1e-19) made eps = 0 a NaN
        float es = ldexp(p.eps, 2 * e);
        float scale = es > FLT_MAX ? 1.0 / sqrt(p.eps) : s / sqrt(mean + es);
        for (uint i = t; i < n; i += WG_SIZE) {
            out_[base + i] = x[base + i] * scale * weight[i];
        }
    }
}
