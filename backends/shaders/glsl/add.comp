#version 450
// x += y, elementwise (grid-stride).
#include "kernel_add.glsl"

void main() {
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += gl_NumWorkGroups.x * WG_X) {
        x[i] = x[i] + y[i];
    }
}
