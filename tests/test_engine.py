"""The engine on tiny random models: a sequence's tokens are the same alone and in a batch whose
rows join and leave mid-run (every backend), prefix sharing (shared blocks, the same output),
a full KV pool (waiting, then served), chunked prefill between decode steps, cancellation, and
the generate_batch / events API."""

from __future__ import annotations

import numpy as np
import pytest
import shaderbay
from shaderbay.errors import ContextLengthExceeded, InvalidOption, ModelError
from shaderbay.models.buffers import RUN_AHEAD
from shaderbay.models.kv_blocks import blocks_for
from shaderbay.models.llama import BLOCK_SIZE
from shaderbay.models.requests import Event, Request
from shaderbay.models.sampling import Sampling

PROMPTS = ([3, 17, 42, 5, 99, 7], [9, 8, 7, 6, 5, 4, 3, 2, 1, 11, 12, 13, 14, 15, 16, 17, 18, 19], [200, 3])
HOT = Sampling(temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.2)


@pytest.fixture(scope="module")
def tiny(numpy_backend):
    with shaderbay.load("synthetic:tiny:f32", backend=numpy_backend, max_context=64, streams=4) as model:
        yield model


def alone(model, request: Request) -> list[int]:
    return [e.token for e in model.engine.stream(request) if e.token is not None]


def run_staggered(engine, requests: list[Request], joins: dict[int, int]) -> dict[int, list[int]]:
    """Step the engine; request i is added after joins.get(i, 0) steps. Each request's tokens."""
    seqs, got, steps = {}, {r.id: [] for r in requests}, 0
    while len(seqs) < len(requests) or not engine.idle:
        for i, r in enumerate(requests):
            if r.id not in seqs and joins.get(i, 0) <= steps:
                seqs[r.id] = engine.add(r)
        for event in engine.step():
            if event.token is not None:
                got[event.seq].append(event.token)
        for s in engine.scheduler.running:  # KV memory follows the tokens (those of the steps in flight too)
            assert len(s.table.blocks) <= blocks_for(s.n_prompt + len(s.generated) + RUN_AHEAD, BLOCK_SIZE)
        steps += 1
    return got


def requests(sampling_of=lambda i: Sampling(), max_tokens=(9, 4, 12)) -> list[Request]:
    return [
        Request(tuple(p), n, sampling_of(i), seed=10 + i)
        for i, (p, n) in enumerate(zip(PROMPTS, max_tokens, strict=True))
    ]


def test_a_sequence_gets_the_same_tokens_alone_and_in_a_changing_batch(model_backend):
    """Rows join (after 0, 2 and 5 steps) and leave (4, 9 and 12 tokens) mid-run; greedy and sampled
    rows share steps (the sampled ones make every step a `sample` step)."""
    with shaderbay.load("synthetic:tiny:f32", backend=model_backend, max_context=64, streams=4) as model:
        mixed = requests(lambda i: HOT if i == 1 else Sampling())
        want = {r.id: alone(model, r) for r in mixed}
        assert model.llama.row_capacity == 1  # the per-row buffers follow the largest batch seen
        assert run_staggered(model.engine, mixed, {1: 2, 2: 5}) == want
        assert model.llama.row_capacity == 2  # at most two rows at once here
        greedy = requests()
        want = {r.id: alone(model, r) for r in greedy}
        assert run_staggered(model.engine, greedy, {0: 3, 2: 1}) == want
        assert model.engine.pool.num_used == 0


@pytest.mark.parametrize("dtype", ["q8_0", "f16"])
def test_sixteen_rows_at_once_each_get_their_tokens_alone(model_backend, dtype):
    """Block weights (q8_0) and float16 (whose products several streams run on the tensor cores where
    the device has them): every row of the matrix products is its own, whatever the batch."""
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 250, rng.integers(2, 30)).tolist() for _ in range(16)]
    with shaderbay.load(f"synthetic:tiny:{dtype}", backend=model_backend, max_context=64, streams=16) as model:
        want = [list(model.tokens(p, 8, ignore_eos=True)) for p in prompts]
        assert [d.token_ids for d in model.generate_batch(prompts, 8, ignore_eos=True)] == want


def test_prefix_sharing_uses_the_shared_blocks_and_changes_nothing(tiny, numpy_backend):
    system = list(range(40, 40 + 2 * BLOCK_SIZE + 3))
    a, b = Request(tuple(system + [1, 2]), 6), Request(tuple(system + [7, 8, 9]), 6)
    with shaderbay.load("synthetic:tiny:f32", backend=numpy_backend, max_context=64, streams=4) as fresh:
        want_b = alone(fresh, b)  # a pool with nothing cached: b computes its whole prompt
    engine = tiny.engine
    sa, sb = engine.add(a), engine.add(b)
    got_b = []
    for event in engine.run([sa, sb]):
        if sb.table.blocks and not sb.finished and sa.table.blocks and not sa.finished:
            shared = sa.table.blocks[:2]
            assert sb.table.blocks[:2] == shared and sb.table.blocks[2] != sa.table.blocks[2]
            assert [engine.pool.refcounts[i] for i in shared] == [2, 2]
        if event.seq == sb.id and event.token is not None:
            got_b.append(event.token)
    assert sb.stats.cached_tokens == 2 * BLOCK_SIZE
    assert got_b == want_b


def test_a_full_pool_makes_a_request_wait_then_serves_it(numpy_backend):
    with shaderbay.load("synthetic:tiny:f32", backend=numpy_backend, max_context=64) as model:  # 4 blocks
        engine = model.engine
        long, short = Request(tuple(PROMPTS[0]), 40), Request(tuple(PROMPTS[2]), 20)  # 3 blocks, 2 blocks
        want = [alone(model, long), alone(model, short)]
        a, b = engine.add(long), engine.add(short)
        engine.step()
        assert engine.scheduler.waiting[0] is b and b.slot is None
        got = {a.id: [], b.id: []}
        for event in engine.run([a, b]):
            if event.token is not None:
                got[event.seq].append(event.token)
            if not a.finished:
                assert not b.generated  # b waits for a's blocks
        assert [got[a.id], got[b.id]] == want


def test_a_long_prompt_is_prefilled_between_decode_steps(numpy_backend):
    with shaderbay.load("synthetic:tiny:f32", backend=numpy_backend, max_context=64, prefill_chunk=8, streams=4) as m:
        engine = m.engine
        running = engine.add(Request(tuple(PROMPTS[0]), 20))
        while not running.generated:
            engine.step()
        late = engine.add(Request(tuple(range(1, 41)), 4))  # 40 tokens: 5 chunks
        gained = []  # the running stream's new tokens at each step while the late prompt is prefilled
        while late.prefilling:
            before = len(running.generated)
            engine.step()
            gained.append(len(running.generated) - before)
        # one chunk a step, a token each time; at the last chunk the late one joins: the steps in flight are read
        assert gained[:4] == [1, 1, 1, 1] and len(gained) == 5 and gained[4] >= 1
        list(engine.run([running, late]))


def test_cancelling_frees_the_blocks(tiny):
    engine = tiny.engine
    seqs = [engine.add(Request(tuple(p), 30)) for p in PROMPTS]
    for _ in range(6):
        engine.step()
    assert engine.pool.num_used > 0 and all(s.generated for s in seqs[:2])
    for s in seqs:
        engine.cancel(s)
    assert [s.finish_reason for s in seqs] == ["cancelled"] * 3
    assert engine.idle and engine.pool.num_used == 0
    last = {}
    for event in engine.run(seqs):
        last[event.seq] = event
    assert [last[s.id] for s in seqs] == [Event(s.id, None, "cancelled") for s in seqs]


def test_generate_batch_returns_each_completion_and_streams_events(tiny):
    done = tiny.generate_batch(PROMPTS, 5, ignore_eos=True)
    assert [d.token_ids for d in done] == [list(tiny.tokens(p, 5, ignore_eos=True)) for p in PROMPTS]
    assert [d.finish_reason for d in done] == ["length"] * 3
    assert [d.prompt_tokens for d in done] == [len(p) for p in PROMPTS]
    end = done[1].token_ids[2]
    stopped = tiny.generate_batch(PROMPTS, 5, stream=True, ignore_eos=True, temperature=0)
    by_prompt: dict[int, list] = {0: [], 1: [], 2: []}
    for i, event in stopped:
        by_prompt[i].append(event)
    assert [sum((e.token_ids for e in by_prompt[i]), []) for i in range(3)] == [d.token_ids for d in done]
    assert all(events[-1].finish_reason == "length" and events[-1].stats for events in by_prompt.values())
    ended = tiny.generate_batch([PROMPTS[1]], 5, stop=None, ignore_eos=False)  # no end token in range: length
    assert ended[0].finish_reason == "length"
    assert list(tiny.tokens(PROMPTS[1], 5, stop=[end])) == done[1].token_ids[:3]


def test_generate_batch_with_text_and_stop_strings(text_model_dir, numpy_backend):
    with shaderbay.load(text_model_dir, backend=numpy_backend) as model:
        prompts = ["hello", "hello world", "he"]
        free = model.generate_batch(prompts, 8, ignore_eos=True)
        assert [d.text for d in free] == [model.generate(p, 8, ignore_eos=True) for p in prompts]
        stop = free[1].text[2:4]
        cut = model.generate_batch(prompts, 8, ignore_eos=True, stop=stop)
        assert cut[1].finish_reason == "stop" and cut[1].text == free[1].text[: free[1].text.index(stop)]
        assert model.engine.idle and model.engine.pool.num_used == 0


def test_tables_larger_than_a_binding_in_a_batch(numpy_backend, monkeypatch, tmp_path):
    """Embedding rows from the host (no run-ahead) and lm_head in parts, for several rows at once."""
    import dataclasses

    from shaderbay.models.synthetic import synthetic_config, write_checkpoint

    path = write_checkpoint(synthetic_config("tiny", "f16", vocab_size=1500), tmp_path, "f16")
    with shaderbay.load(path, backend=numpy_backend, cache_dtype="f32", max_context=128, streams=3) as ref:
        want = [list(ref.tokens(p, 8)) for p in PROMPTS]
    small = dataclasses.replace(numpy_backend.caps, max_binding_size=65536)
    monkeypatch.setattr(numpy_backend, "caps", small)
    with shaderbay.load(path, backend=numpy_backend, cache_dtype="f32", max_context=128, streams=3) as model:
        w = model.llama.weights
        assert w.embed is None and len(w.lm_head_parts) > 1 and model.llama.layout.rows >= 3
        assert [d.token_ids for d in model.generate_batch(PROMPTS, 8)] == want


def test_bad_requests_are_refused_when_added(tiny):
    engine = tiny.engine
    with pytest.raises(InvalidOption, match="max_tokens must be an integer >= 1"):
        engine.add(Request((1, 2), 0))
    with pytest.raises(ModelError, match="vocabulary"):
        engine.add(Request((1, 100_000), 4))
    with pytest.raises(ContextLengthExceeded):
        engine.add(Request(tuple(range(1, 60)), 10))
    seq = engine.add(Request((1, 2), 2, id=12345))
    with pytest.raises(InvalidOption, match="already being served"):
        engine.add(Request((3, 4), 2, id=12345))
    assert [e.finish_reason for e in engine.run([seq])][-1] == "length"
    assert engine.idle


@pytest.mark.parametrize(
    ("streams", "invariant", "forms"),
    [(1, True, ("vector", "vector")), (4, True, ("matrix", "matrix")), (4, False, ("vector", "matrix"))],
)
def test_the_rows_form_of_the_products_follows_streams_and_batch_invariance(numpy_backend, streams, invariant, forms):
    """A multi-stream model asks every product for the matrix units' form (one row too, so a row's sums
    never depend on its batch) unless batch_invariant=False; one stream keeps the matrix-vector form."""
    with shaderbay.load(
        "synthetic:tiny:f16", backend=numpy_backend, max_context=64, streams=streams, batch_invariant=invariant
    ) as model:
        assert model.llama.row_forms == forms
        model.generate_batch([[3, 4, 5], [6, 7]], 3, ignore_eos=True)
        used = {key[1] for key in model.llama._pipelines if key[0] == "matmul"}
        assert {dict(c)["rows_form"] for c in used} == set(forms[: 1 + (streams > 1)])
