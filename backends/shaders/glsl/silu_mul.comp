#version 450
// out[r] = silu(gate_up[r, :n]) * gate_up[r, n:]. Grid: x over n, y over rows (grid-stride).
#include "kernel_silu_mul.glsl"

void main() {
    uint n = p.n;
    for (uint r = gl_WorkGroupID.y; r < p.rows; r += gl_NumWorkGroups.y) {
        for (uint c = gl_GlobalInvocationID.x; c < n; c += gl_NumWorkGroups.x * WG_X) {
            float g = gate_up[2u * r * n + c];
            float u = gate_up[2u * r * n + n + c];
            out_[r * n + c] = g / (1.0 + exp(-g)) * u;
        }
    }
}
