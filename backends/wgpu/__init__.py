"""The wgpu backend: the shared SPIR-V kernels through wgpu-native (wgpu-py 0.32).

wgpu translates the SPIR-V (it does not pass it through) and cannot replay a command
buffer, so a command list is prepared once into typed steps with every bind group made
then, and encoded again from them on every submit: one command encoder, one compute pass
per run of consecutive dispatches, one submit. The per-dispatch calls go straight to
wgpu-native's C functions through wgpu-py's own cffi binding, a fraction of the wrappers'
per-call cost.

The modules, in reading order:
  loader.py           wgpu-py and wgpu-native, and the private parts of wgpu-py used (each with why)
  adapter.py          adapter choice: Vulkan only unless allowed, by name, discrete first
  device.py           the device (features, limits at their maximum) and its Caps
  native.py           the native fast path: encode, submit, wait, read back through the C functions
  buffers.py          buffers, writes, reads through a kept staging buffer, mapped read-back
  preflight.py        each new SPIR-V tried in a child process first (a translator panic aborts);
                      the verdicts of the shipped SPIR-V ship too (translated.json)
  preflight_child.py  that child
  translated.py       the verdicts the package ships (translated.json), tried at `make shaders`
  pipelines.py        limits, variant choice, shader modules, compute pipelines
  commands.py         typed steps, the one encoding loop, submit, wait, timestamps
  backend.py          WgpuBackend, which wires them to the core interface, and `create`
  bench.py            host cost of encoding, submitting and reading back

Environment (also in the README's table):
  SHADERBAY_WGPU_ADAPTER    pick the adapter whose name contains this (case-insensitive)
  SHADERBAY_WGPU_ALLOW_ANY  accept non-Vulkan adapters (OpenGL, Metal, D3D12); by default
                            only Vulkan adapters are used, because without a Vulkan driver
                            wgpu silently falls back to OpenGL (no f16, no subgroups)
  SHADERBAY_WGPU_TIMESTAMPS time every dispatch on the GPU (also on while the tracer is)
  SHADERBAY_WGPU_ENCODER    "ffi" (default) or "python": how dispatches are encoded
  SHADERBAY_WGPU_PREFLIGHT  0 to skip trying new SPIR-V in a child process first (preflight.py)
  SHADERBAY_WGPU_CHECKS     1 to keep wgpu's shader runtime checks (bounds checks on every access,
                            loop counters); off by default, see pipelines.Pipelines._shader_module
"""
