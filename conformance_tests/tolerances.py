"""How the conformance suite measures a kernel's error, and the budgets that are not one kernel's.

The error of a kernel run is ``‖out − ref‖ / ‖ref‖`` over the elements the kernel writes (the
Euclidean norm, in float64), where ``ref`` is the NumPy reference (float64 accumulation) run on
the same input bytes. NaN or infinity where the reference has a finite value is an error of
infinity: it never passes. Elements a kernel must not write are compared byte for byte.

Each kernel's budget per storage dtype is declared, with why, in its record in ``cases/``
(``KernelCases.tolerance``). The dtype key is the kernel's storage constant (``wdtype`` for embed
and matmul, ``cache_dtype`` for kv_write and attention) or ``f32`` for kernels without one. Inputs in
f16/bf16 are generated as values of that dtype, so the conversion itself costs nothing: the
budgets are for the arithmetic a GPU does differently from the reference.

A broken kernel is typically off by 1e-1 or more (or leaves NaN poison behind), so these
budgets separate right from wrong by orders of magnitude. ``SAMPLE_MARGIN`` is the
sampler's: probabilities (relative) and cumulative mass (fraction of the kept mass)
within this margin of a decision boundary are "near" it, and the drawn token is then only
required to be one of the reference's candidates.
"""

from __future__ import annotations

from typing import Any

from .cases import kernel_cases

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
    budgets, key = kernel_cases(kernel).tolerance, dtype_key(constants)
    if key not in budgets:
        raise LookupError(f"the KernelCases record of {kernel!r} has no tolerance for storage dtype {key!r}: add one")
    return budgets[key]


# A whole model's next-token logits (tests/test_device_agreement.py): the kernels' float32
# differences (~1e-6 each) compound over hundreds of dispatches and 30 layers of random weights
# whose gain exceeds 1 (measured on lavapipe: 1.2e-3 for the smollm2-135m shape in float16).
MODEL_LOGITS = 5e-3

# A model's own products (tests/test_prefill_matmul.py, at the shapes a prompt runs): tighter than
# `matmul`'s f16 budget, which admits f16 rounding of the activations (~3e-4 a product). Over the
# smollm2-135m shape's 30 layers that rounding alone takes the logits to 1.7e-2 (NumPy, the
# prompt of tests/test_device_agreement.py; measured on the H200 with the cooperative-matrix
# kernel: 1.85e-2), and noise of 1e-5 a product already to 4.4e-3 of MODEL_LOGITS' 5e-3.
MODEL_PRODUCT = 1e-5
