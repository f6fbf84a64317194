"""The GPU kernels shared by the wgpu and Vulkan backends: GLSL sources, shipped SPIR-V, the variant table.

- `glsl/*.comp` (+ `glsl/*.glsl` includes; `glsl/kernel_<name>.glsl` is generated from the
  catalogue): one source per kernel family;
- `spv/*.spv`: SPIR-V 1.5, compiled ahead of time by `python -m shaderbay.backends.shaders.build`
  (`--check` verifies the shipped files);
- `variants`: the one table of compiled variants, `select(kernel, constants, params, caps)`
  to pick one from capabilities and parameters, `spirv(variant)` for its bytes.
"""
