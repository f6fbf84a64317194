"""The conformance suite's tolerances, declared once: kernel -> storage dtype -> largest relative error.

The error of a kernel run is ``‖out − ref‖ / ‖ref‖`` over the elements the kernel writes (the
Euclidean norm, in float64), where ``ref`` is the NumPy reference (float64 accumulation) run on
the same input bytes. NaN or infinity where the reference has a finite value is an error of
infinity: it never passes. Elements a kernel must not write are compared byte for byte.

The dtype key is the kernel's storage constant (``wdtype`` for embed and matmul,
``cache_dtype`` for kv_write and attention) or ``f32`` for kernels without one. Inputs in
f16/bf16 are generated as values of that dtype, so the conversion itself costs nothing: the
budgets below are for the arithmetic a GPU does differently from the reference.

Why these numbers:

- Copies, counters and exact conversions (embed, kv_write to an f32 cache, argmax's index,
  advance) must be exact: 0. A 1e-6 budget for embed only forgives a device flushing subnormals to zero.
- kv_write into an f16 cache may round a float32 to nearest-even or toward zero: one f16
  ulp is 2^-10 ≈ 9.8e-4 of the value.
- ``add`` is one correctly rounded float32 addition per element.
- rmsnorm, silu_mul: float32 sums of n terms plus an approximate ``inversesqrt``/``exp``
  (a few ulp): 1e-4 leaves a wide margin and still sees any missing epsilon or term.
- matmul: a float32 dot product of k terms drifts like sqrt(k) ulp; 1e-4 for k in the
  thousands. f16/bf16 weights are widened exactly, but a device may multiply in half
  precision (f16 products: ~5e-4; bf16: ~4e-3): those budgets are wider.
- rope: the angle is float32 and cos/sin of angles up to thousands of radians in float32
  lose about |angle| · 2^-24 absolute; 1e-3 is well above that and far below a sign error.
- attention: float32 softmax (exp) and a weighted sum over up to max_seq rows; f16
  caches allow half-precision dot products. decode_attention (rope + kv_write + attention
  of one row) has attention's budgets: its rotation's error is far below them, and the
  cache row it writes is compared with them too.

A broken kernel is typically off by 1e-1 or more (or leaves NaN poison behind), so these
budgets separate right from wrong by orders of magnitude. ``SAMPLE_MARGIN`` is the
sampler's: probabilities (relative) and cumulative mass (fraction of the kept mass)
within this margin of a decision boundary are "near" it, and the drawn token is then only
required to be one of the reference's candidates.
"""

from __future__ import annotations

from typing import Any

TOLERANCES: dict[str, dict[str, float]] = {
    "embed": {"f32": 1e-6, "f16": 1e-6, "bf16": 1e-6},
    "rmsnorm": {"f32": 1e-4},
    "matmul": {"f32": 1e-4, "f16": 1e-3, "bf16": 4e-3},
    "rope": {"f32": 1e-3},
    "kv_write": {"f32": 0.0, "f16": 2e-3},
    "attention": {"f32": 2e-4, "f16": 2e-3},
    "silu_mul": {"f32": 1e-4},
    "add": {"f32": 1e-6},
    "argmax": {"f32": 0.0},
    "sample": {"f32": 0.0},
    "advance": {"f32": 0.0},
}

TOLERANCES["decode_attention"] = TOLERANCES["attention"]

SAMPLE_MARGIN = 1e-4

# which constant names the storage dtype of a kernel
_DTYPE_CONSTANTS = ("wdtype", "cache_dtype")


def dtype_key(constants: dict[str, Any]) -> str:
    for name in _DTYPE_CONSTANTS:
        if name in constants:
            return constants[name]
    return "f32"


def tolerance(kernel: str, constants: dict[str, Any]) -> float:
    """The largest relative error allowed for `kernel` run with `constants`."""
    try:
        per_dtype = TOLERANCES[kernel]
    except KeyError:
        raise KeyError(
            f"conformance_tests/tolerances.py declares no tolerance for kernel {kernel!r}: add one"
        ) from None
    return per_dtype[dtype_key(constants)]


# A whole model's next-token logits (tests/test_device_agreement.py): the kernels' float32
# differences (~1e-6 each) compound over hundreds of dispatches and 30 layers of random weights
# whose gain exceeds 1 (measured on lavapipe: 1.2e-3 for the smollm2-135m shape in float16).
MODEL_LOGITS = 5e-3
