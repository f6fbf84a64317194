#version 450
// Moves a recorded decode step on: one invocation bumps the position and the sampler's counters.
#include "kernel_advance.glsl"

void main() {
    position[0] += p.steps;
    state[1] += p.steps;
    state[2] += p.steps;
}
