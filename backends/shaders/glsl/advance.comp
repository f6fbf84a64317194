#version 450
// Moves a recorded decode step on: an invocation per row (grid-stride) bumps its position and
// its slot's sampler counters (the rows are of distinct slots: no two share a counter).
#include "kernel_advance.glsl"

void main() {
    for (uint r = gl_GlobalInvocationID.x; r < p.rows; r += gl_NumWorkGroups.x * WG_SIZE) {
        positions[r] += p.steps;
        uint s = seqs[r];
        if (s < p.n_seqs) {
            state[4u * s + 1u] += p.steps;
            state[4u * s + 2u] += p.steps;
        }
    }
}
