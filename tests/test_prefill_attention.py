"""Prefill attention at many-row shapes over the paged cache on vulkan: the tensor-core variant
(attention_coop.comp).

The conformance suite's generated attention cases have few rows; prefill with more rows than
BATCH_ROWS runs attention_coop.comp where the device lists its product (the H200: this is its check
there; lavapipe: the per-row kernel). Its K/V tiles are gathered through the block tables, so the
cases here make them awkward: blocks smaller than a 64-key tile and of sizes that do not divide
it (a tile spans several blocks and starts mid-block), scattered and shared blocks, positions
without a block, a workgroup's rows of several slots, rows of no slot, rows past the capacity,
and NaN in every cache row no query may read. Each runs against the NumPy reference within
attention's own tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
from shaderbay.backends.numpy.kernels import visible_rows
from shaderbay.backends.shaders import variants
from shaderbay.backends.shaders.records import COOP_SHAPE
from shaderbay.backends.shaders.variants_attention import ATTN_COOP_HEAD_DIM
from shaderbay.conformance.cases import RngValues, kernel_cases
from shaderbay.conformance.harness import Case, compare_outputs, explain_error, run_case
from shaderbay.conformance.plugin import session_backend

CONSTANTS = {"cache_dtype": "f16"}
HD = ATTN_COOP_HEAD_DIM
U32_MAX = 0xFFFFFFFF

# the catalogue's generated cases (random tables, positions and slots) at many rows; rows not a
# multiple of the variant's 64-row tile; GQA groups of 1 to 5
GENERATED = (
    {"rows": 70, "n_kv_heads": 1, "group": 1, "head_dim": HD, "block_size": 5, "blocks_per_seq": 30, "n_seqs": 2,
     "extra": 2},
    {"rows": 130, "n_kv_heads": 2, "group": 5, "head_dim": HD, "block_size": 24, "blocks_per_seq": 12, "n_seqs": 3,
     "extra": 1},
    {"rows": 100, "n_kv_heads": 3, "group": 3, "head_dim": HD, "block_size": 16, "blocks_per_seq": 8, "n_seqs": 1,
     "extra": 0},
)  # fmt: skip


def _paged_case(seed: int, table: np.ndarray, n_blocks: int, block_size: int, seqs, positions, group: int = 3) -> Case:
    """An attention case over `table` (n_seqs x blocks_per_seq) with NaN in every cache row no row sees."""
    v = RngValues(seed)
    n_seqs, per_seq = table.shape
    n_kv_heads = 2
    rows, width = len(seqs), n_kv_heads * HD
    p = {"rows": rows, "n_heads": n_kv_heads * group, "n_kv_heads": n_kv_heads, "head_dim": HD,
         "q_stride": n_kv_heads * group * HD, "block_size": block_size, "blocks_per_seq": per_seq,
         "n_blocks": n_blocks, "n_seqs": n_seqs, "scale": float(np.float32(HD**-0.5))}  # fmt: skip
    arrays = {
        "q": v.floats(rows * p["q_stride"], -2.0, 2.0),
        "positions": np.asarray(positions, np.uint32),
        "seqs": np.asarray(seqs, np.uint32),
        "block_tables": table.astype(np.uint32).ravel(),
    }
    seen = np.zeros(n_blocks * block_size, bool)
    for seq, pos in zip(arrays["seqs"], arrays["positions"], strict=True):
        seen[visible_rows(arrays, p, int(seq), int(pos))] = True
    for name in ("k_cache", "v_cache"):
        cache = v.floats(seen.size * width, -2.0, 2.0, "f16").reshape(-1, width)
        cache[~seen] = np.nan
        arrays[name] = cache.ravel()
    return Case("attention", CONSTANTS, p, arrays, sizes={"out": rows * p["n_heads"] * HD},
                note=f"{int(seen.sum())} of {seen.size} cache rows visible")  # fmt: skip


def _prompt_after_a_prefix() -> Case:
    """One slot's 100 prompt rows at positions 37..136 (a cached prefix before them), blocks of 24 in
    a scattered order: every 64-key tile spans 3 or 4 blocks and most start mid-block; positions
    48..71 have no block (an invalid entry)."""
    rng = np.random.default_rng(5)
    n_blocks, per_seq = 20, 8
    table = rng.permutation(n_blocks)[: 2 * per_seq].reshape(2, per_seq)
    table[1, 2] = n_blocks
    return _paged_case(11, table, n_blocks, 24, np.ones(100), np.arange(37, 137))


def _slots_mixed() -> Case:
    """130 rows of three slots interleaved (every workgroup holds all of them), blocks of 5 shared
    between slots as a prefix cache shares them, some invalid entries; slot 2's first 4 blocks
    invalid (its row at position 10 sees no key: zeros), rows of slot 3 (>= n_seqs) and of slot
    U32_MAX (zeros), rows past the capacity (150)."""
    rng = np.random.default_rng(6)
    n_blocks, per_seq = 60, 30
    table = rng.integers(0, n_blocks, (3, per_seq))
    table[1, :10] = table[0, :10]  # a shared prefix
    table[0, 7] = n_blocks + 1
    table[2, :4] = U32_MAX
    seqs = rng.integers(0, 3, 130)
    positions = rng.integers(0, 153, 130)
    seqs[[3, 70]] = 3
    seqs[100] = U32_MAX
    seqs[40], positions[40] = 2, 10
    return _paged_case(12, table, n_blocks, 5, seqs, positions, group=1)


SCENARIOS = {"prompt_after_a_prefix": _prompt_after_a_prefix, "slots_mixed": _slots_mixed}


def _check(backend, case: Case) -> None:
    chosen = variants.select("attention", CONSTANTS, case.params, backend.caps)
    assert (chosen.source == "attention_coop.comp") == (COOP_SHAPE in backend.caps.cooperative_matrix), chosen.name
    outcome = run_case(backend, case)
    dtypes = backend.pipeline("attention", **CONSTANTS).dtypes
    tolerance = kernel_cases("attention").tolerance[CONSTANTS["cache_dtype"]]
    err = compare_outputs(case, outcome, dtypes)
    assert err <= tolerance, explain_error(case, outcome, dtypes, tolerance)


@pytest.mark.parametrize("name", SCENARIOS)
def test_prefill_attention_through_block_tables(name, pytestconfig):
    _check(session_backend(pytestconfig, "vulkan"), SCENARIOS[name]())


@pytest.mark.parametrize("index", range(len(GENERATED)), ids=[f"rows{s['rows']}" for s in GENERATED])
def test_prefill_attention_agrees_with_numpy(index, pytestconfig):
    """The catalogue's cases (its position modes: a prompt's consecutive positions, early ones, past
    the capacity; sometimes NaN in the rows no query sees)."""
    backend = session_backend(pytestconfig, "vulkan")
    for seed in range(3):
        _check(
            backend, kernel_cases("attention").case(RngValues(1000 + 10 * index + seed), CONSTANTS, GENERATED[index])
        )
