#version 450
// Rotary embedding (rotate-half), in place. One invocation per (row, head, i < head_dim/2).
// Grid: x over heads * head_dim/2, y over rows (both grid-stride).
#include "kernel_rope.glsl"

void main() {
    uint half_dim = p.head_dim / 2u;
    uint per_row = p.heads * half_dim;
    for (uint r = gl_WorkGroupID.y; r < p.rows; r += gl_NumWorkGroups.y) {
        float pos = float(positions[r]);
        for (uint j = gl_GlobalInvocationID.x; j < per_row; j += gl_NumWorkGroups.x * WG_X) {
            uint h = j / half_dim;
            uint i = j - h * half_dim;
            vec2 cs = cos_sin(pos * inv_freq[i]);
            uint a = r * p.stride + p.offset + h * p.head_dim + i;
            float x1 = x[a];
            float x2 = x[a + half_dim];
            x[a] = x1 * cs.x - x2 * cs.y;
            x[a + half_dim] = x2 * cs.x + x1 * cs.y;
        }
    }
}
