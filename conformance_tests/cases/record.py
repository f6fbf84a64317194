"""The record of one kernel's cases, and the size strategies the records share."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from ..harness import Case
from .values import HypothesisValues, Values

# sizes around the usual workgroup and tile sizes (and 1)
AWKWARD_SIZES = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 511, 513)

Shape = dict[str, int]
Builder = Callable[[Values, dict[str, Any], Shape], Case]


def dim(hi: int, lo: int = 1) -> st.SearchStrategy[int]:
    """A size in [lo, hi], often an awkward one (1, or next to a power of two)."""
    awkward = [s for s in AWKWARD_SIZES if lo <= s <= hi]
    return st.one_of(st.integers(lo, hi), st.sampled_from(awkward)) if awkward else st.integers(lo, hi)


def even_dim(hi: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(1, hi // 2).map(lambda h: 2 * h), st.sampled_from([2, 6, 14, 16, 30, 32, 34, 64]))


def elements(shape: Shape) -> float:
    """The product of a shape's sizes (`extra` is padding, not work)."""
    return float(math.prod(v for k, v in shape.items() if k != "extra"))


@dataclass(frozen=True)
class Regime:
    """A range of values real models produce (a sign, a magnitude, subnormals, ties) that the
    ordinary cases rarely or never reach: the kernel's ordinary case, its values then rewritten by
    `rewrite(values, case)`. Regimes rewrite values only (never the bindings' layout), so they
    keep applying when a kernel's bindings change. `promise` says what of the catalogue's doc the
    regime holds the kernel to; `constants` are the combinations it runs with (over the defaults)."""

    name: str
    promise: str
    rewrite: Callable[[Values, Case], Case]
    constants: tuple[dict[str, Any], ...] = ({},)


@dataclass(frozen=True)
class KernelCases:
    """Everything the conformance suite needs to test one catalogue kernel.

    A case is built in two steps: a shape (the size parameters), then the values, drawn
    through a `Values` source by `build(values, constants, shape)`.
    """

    kernel: str
    shapes: st.SearchStrategy[Shape]  # generated shapes, small enough for a software GPU
    ladder: tuple[Shape, ...]  # model-sized shapes of growing cost, run in order while the time budget lasts
    build: Builder
    # storage dtype (the `wdtype` or `cache_dtype` constant, else "f32") -> largest relative error;
    # tolerances.py says how the error is measured
    tolerance: Mapping[str, float]
    cost: Callable[[Shape], float] = elements  # work of a shape, roughly: predicts a ladder step's time
    examples: float = 1.0  # examples per constant combination, as a share of the profile's max_examples
    regimes: tuple[Regime, ...] = ()  # value regimes, each tested on its own (test_kernels.test_regime)

    def case(self, values: Values, constants: dict[str, Any], shape: Shape) -> Case:
        return self.build(values, dict(constants), dict(shape))

    def strategy(self, constants: dict[str, Any]) -> st.SearchStrategy[Case]:
        """Generated cases: a shape, then values, both drawn by Hypothesis."""

        @st.composite
        def cases(draw: Callable) -> Case:
            return self.case(HypothesisValues(draw), constants, draw(self.shapes))

        return cases()

    def regime(self, name: str) -> Regime:
        return next(r for r in self.regimes if r.name == name)

    def regime_strategy(self, name: str, constants: dict[str, Any]) -> st.SearchStrategy[Case]:
        """Generated cases of one value regime: an ordinary case, its values rewritten."""
        regime = self.regime(name)

        @st.composite
        def cases(draw: Callable) -> Case:
            values = HypothesisValues(draw)
            case = regime.rewrite(values, self.case(values, constants, draw(self.shapes)))
            case.note = f"{case.note}; regime {name}" if case.note else f"regime {name}"
            return case

        return cases()
