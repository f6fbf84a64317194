#version 450
// out[r] = table[ids[r]] as float32; ids >= vocab give a row of zeros.
// Grid: x over columns, y over rows (both grid-stride).
#include "kernel_embed.glsl"

void main() {
    uint dim = p.dim;
    for (uint r = gl_WorkGroupID.y; r < p.rows; r += gl_NumWorkGroups.y) {
        uint id = ids[r];
        for (uint c = gl_GlobalInvocationID.x; c < dim; c += gl_NumWorkGroups.x * WG_X) {
            out_[r * dim + c] = id < p.vocab ? load_table(id * dim + c) : 0.0;
        }
    }
}
