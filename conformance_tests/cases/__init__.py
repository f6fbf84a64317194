"""Kernel cases: one `KernelCases` record per catalogue kernel, in the module of its family.

A record holds everything the suite needs to test its kernel: the generated shapes (small ones
drawn by Hypothesis, including sizes that are not multiples of any workgroup and size 1), the
large ladder of model-sized shapes, the builder that draws the values, the tolerance per storage
dtype, and the cost of a shape. To test a new kernel, add its record to the ``CASES`` of its
family module (``elementwise``, ``matmul``, ``attention``, ``sampling``).
"""

from __future__ import annotations

from . import attention, elementwise, matmul, sampling
from .record import KernelCases
from .sampling import sample_candidates
from .values import RngValues

__all__ = ["CASES", "KernelCases", "RngValues", "kernel_cases", "sample_candidates"]


def _index(*families: tuple[KernelCases, ...]) -> dict[str, KernelCases]:
    index: dict[str, KernelCases] = {}
    for record in (r for family in families for r in family):
        if record.kernel in index:
            raise ValueError(f"two KernelCases records for kernel {record.kernel!r} in conformance_tests/cases/")
        index[record.kernel] = record
    return index


CASES = _index(elementwise.CASES, matmul.CASES, attention.CASES, sampling.CASES)


def kernel_cases(kernel: str) -> KernelCases:
    try:
        return CASES[kernel]
    except KeyError:
        raise LookupError(
            f"the conformance suite has no cases for kernel {kernel!r}: add a KernelCases record to "
            "the family module where it belongs in conformance_tests/cases/"
        ) from None
