#version 450
// out[r] = table[ids[r]] as float32; ids >= vocab give a row of zeros.
// Grid: x over columns, y over rows (both grid-stride).
#include "kernel_embed.glsl"

void main() {
    uint dim = p.dim;
    for (uint r = gl_WorkGroupID.y; r < p.rows; r += gl_NumWorkGroups.y) {
        uint id = ids[r];
#if defined(QBLOCK)
        // GGUF blocks: 4 values an invocation (dim is whole blocks)
        uint rb = id * (dim / QBLOCK) * QBYTES;
        for (uint c = 4u * gl_GlobalInvocationID.x; c < dim; c += 4u * gl_NumWorkGroups.x * WG_X) {
            vec4 v = vec4(0.0);
            if (id < p.vocab) {
                v = dequant4(rb, c);
            }
            uint o = r * dim + c;
            out_[o] = v.x;
            out_[o + 1u] = v.y;
            out_[o + 2u] = v.z;
            out_[o + 3u] = v.w;
        }
#else
        for (uint c = gl_GlobalInvocationID.x; c < dim; c += gl_NumWorkGroups.x * WG_X) {
            out_[r * dim + c] = id < p.vocab ? load_table(id * dim + c) : 0.0;
        }
#endif
    }
}
