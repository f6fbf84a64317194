"""The generation API: checked settings and the model's defaults, stop strings, finish reasons,
cancellation, the prefix cache of one sequence, truncation and the Chat object."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import shaderbay
from shaderbay.backends.numpy.kernels import sample_token
from shaderbay.errors import ContextLengthExceeded, InvalidOption, ModelError
from shaderbay.models.llama import BLOCK_SIZE
from shaderbay.models.settings import GenerationSettings
from shaderbay.models.stop import StopMatcher

PROMPT = [3, 17, 42, 5, 99, 7, 1, 64, 200, 11]


@pytest.fixture(scope="module")
def text_model(text_model_dir, numpy_backend):
    with shaderbay.load(text_model_dir, backend=numpy_backend) as model:
        yield model


@pytest.fixture(scope="module")
def tiny(numpy_backend):
    with shaderbay.load("synthetic:tiny:f32", backend=numpy_backend, max_context=64) as model:
        yield model


# --- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, says",
    [
        (dict(max_tokens=0), "max_tokens must be an integer >= 1"),
        (dict(max_tokens=-1), "max_tokens must be an integer >= 1"),
        (dict(max_tokens=2.5), "max_tokens must be an integer"),
        (dict(temperature=-1), "temperature must be a finite number >= 0.0"),
        (dict(temperature=math.nan), "temperature must be a finite number"),
        (dict(temperature=math.inf), "temperature must be a finite number"),
        (dict(top_p=0.0), "top_p must be a finite number in (0.0, 1.0]"),
        (dict(top_p=1.5), "top_p must be a finite number in (0.0, 1.0]"),
        (dict(top_k=-1), "top_k must be an integer >= 0"),
        (dict(top_k=True), "top_k must be an integer"),
        (dict(min_p=1.0), "min_p must be a finite number in [0.0, 1.0)"),
        (dict(repetition_penalty=0), "repetition_penalty must be a finite number > 0.0"),
        (dict(seed=-3), "seed must be an integer in [0, "),
        (dict(stop=[1, 2]), "stop must be a string or a list of strings"),
        (dict(stop=""), "a stop string must not be empty"),
        (dict(truncate="right"), "truncate must be one of none, left"),
        (dict(temprature=0.5), "unknown generation option 'temprature'"),
    ],
)
def test_every_option_is_checked_with_its_range(bad, says):
    with pytest.raises(InvalidOption) as err:
        GenerationSettings.build(**bad)
    assert says in str(err.value)
    assert isinstance(err.value, ModelError) and isinstance(err.value, ValueError)


def test_options_are_checked_before_the_first_event(tiny):
    with pytest.raises(InvalidOption, match="top_p"):
        tiny.events(PROMPT, 4, top_p=2.0)  # not iterated: the call itself refuses
    with pytest.raises(InvalidOption, match="stop strings need a tokenizer"):
        tiny.events(PROMPT, 4, stop="x")


def test_defaults_come_from_generation_config(text_model_dir, tmp_path, numpy_backend):
    fixed = GenerationSettings()
    assert (fixed.temperature, fixed.top_k, fixed.top_p, fixed.min_p) == (0.8, 40, 0.95, 0.05)
    assert GenerationSettings.from_generation_config({"do_sample": False, "top_k": 7}).temperature == 0
    d = tmp_path / "model"
    shutil.copytree(text_model_dir, d)
    config = json.loads((d / "generation_config.json").read_text())
    (d / "generation_config.json").write_text(json.dumps({**config, "temperature": 0.3, "top_p": 0.5}))
    with shaderbay.load(d, backend=numpy_backend) as model:
        assert (model.defaults.temperature, model.defaults.top_p, model.defaults.top_k) == (0.3, 0.5, 40)
        assert model.settings(top_p=0.9).top_p == 0.9
    (d / "generation_config.json").write_text(json.dumps({"temperature": -2}))
    with pytest.raises(InvalidOption, match="generation_config.json: temperature"):
        shaderbay.load(d, backend=numpy_backend)


def test_max_context_is_bounded_by_the_model(numpy_backend):
    with pytest.raises(InvalidOption, match=r"max_context must be an integer in \[1, 2048\] \(the model.s context\)"):
        shaderbay.load("synthetic:tiny", backend=numpy_backend, max_context=100_000)


# --- stop strings ----------------------------------------------------------------------------------------


def test_stop_matcher_holds_back_what_could_begin_a_stop_string():
    m = StopMatcher(("END", "\n\n"))
    assert m.push("abc E") == ("abc ", False)  # "E" may begin "END"
    assert m.push("N") == ("", False)
    assert m.push("Dx") == ("", True)  # "END" across three pieces: nothing of it emitted
    m = StopMatcher(("END",))
    assert m.push("xEN") == ("x", False)
    assert m.push("o") == ("ENo", False)  # it was not a stop string after all
    assert m.push("E") == ("", False) and m.flush() == "E"
    assert StopMatcher(("b", "ab")).push("xab") == ("x", True)  # the earliest match wins


def test_stop_strings_end_the_text_and_are_never_emitted(text_model):
    free = text_model.complete("hello world", 24, temperature=0, ignore_eos=True)
    assert free.finish_reason == "length" and len(free.token_ids) == 24
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 3]
    want = free.text[: free.text.index(stop)]
    events = list(text_model.events("hello world", 24, temperature=0, ignore_eos=True, stop=[stop, "\x00never"]))
    assert "".join(e.text for e in events) == want
    assert [e.finish_reason for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1].finish_reason == "stop"
    ids = [t for e in events for t in e.token_ids]
    assert ids == free.token_ids[: len(ids)] and len(ids) < 24
    assert text_model.generate("hello world", 24, ignore_eos=True, stop=stop) == want


# --- finish reasons, cancellation, the earlier API -------------------------------------------------------


def test_finish_reasons(text_model):
    free = text_model.complete("hello", 8, temperature=0, ignore_eos=True)
    assert free.finish_reason == "length" and free.completion_tokens == 8 and free.prompt_tokens > 0
    end = free.token_ids[3]
    first = free.token_ids.index(end)
    saved = text_model.end_token_ids
    text_model.end_token_ids = frozenset({end})
    try:
        done = text_model.complete("hello", 8, temperature=0)
    finally:
        text_model.end_token_ids = saved
    assert done.finish_reason == "stop"
    assert done.token_ids == free.token_ids[:first]  # the end token is not part of the result
    assert done.completion_tokens == first + 1
    assert done.text == text_model.decode(free.token_ids[:first])


def test_closing_the_stream_cancels_and_leaves_the_model_ready(tiny):
    want = tiny.complete(PROMPT, 12, temperature=0)
    events = tiny.events(PROMPT, 12, temperature=0)
    assert [next(events).token_ids for _ in range(3)] == [[t] for t in want.token_ids[:3]]
    events.close()
    assert tiny.stats.finish_reason == "cancelled"
    again = tiny.complete(PROMPT, 12, temperature=0)
    assert again.token_ids == want.token_ids and again.finish_reason == "length"


def test_a_seed_reproduces_a_sampled_completion(tiny):
    a = tiny.complete(PROMPT, 10, seed=5, temperature=1.0)
    assert a.seed == 5 and tiny.complete(PROMPT, 10, seed=5, temperature=1.0).token_ids == a.token_ids
    assert tiny.complete(PROMPT, 10, seed=6, temperature=1.0).token_ids != a.token_ids


def test_min_p_on_the_device_matches_the_host_sampler(tiny):
    options = dict(temperature=1.5, top_k=0, top_p=1.0, min_p=0.3, seed=11)
    out = tiny.complete(PROMPT, 6, **options).token_ids
    for step, token in enumerate(out):
        seq = PROMPT + out[:step]
        want = sample_token(tiny.logits(seq), np.array(seq, np.uint32), 11, step, 1.5, 0, 1.0, 1.0, 0.3)
        assert token == want, f"step {step}"


def test_a_prompt_longer_than_the_context(tiny):
    long = (PROMPT * 7)[:60]
    with pytest.raises(ContextLengthExceeded):
        tiny.complete(long, 10, temperature=0)
    cut = tiny.complete(long, 10, temperature=0, truncate="left")
    assert cut.prompt_tokens == 64 - 10 + 1
    assert cut.token_ids == tiny.complete(long[-55:], 10, temperature=0).token_ids


# --- the prefix cache -------------------------------------------------------------------------------------


def test_a_prompt_that_extends_a_cached_one_computes_only_the_rest(model_backend, make_checkpoint):
    """Whole KV blocks of earlier generations (prompt and reply) are shared, not computed again."""
    prompt = (PROMPT * 4)[:40]
    whole = lambda n: n // BLOCK_SIZE * BLOCK_SIZE  # noqa: E731 - positions in whole blocks
    with shaderbay.load(make_checkpoint("tiny", "f32"), backend=model_backend) as model:
        first = model.complete(prompt, 6, temperature=0)
        assert first.cached_tokens == 0 and model.stats.prefill_tokens == len(prompt)
        follow = prompt + first.token_ids + [9, 8, 7]
        second = model.complete(follow, 6, temperature=0)
        # the blocks hold the prompt and every reply token but the last (sampled, never fed back)
        assert second.cached_tokens == whole(len(prompt) + 5) > 0
        assert model.stats.prefill_tokens == len(follow) - second.cached_tokens
        sampled = model.complete(follow, 6, temperature=0.9, seed=3)
        assert sampled.cached_tokens == whole(len(follow) - 1)  # the same prompt again: at least its last token
        with shaderbay.load(make_checkpoint("tiny", "f32"), backend=model_backend) as fresh:
            assert fresh.complete(follow, 6, temperature=0).token_ids == second.token_ids
            assert fresh.complete(follow, 6, temperature=0.9, seed=3).token_ids == sampled.token_ids


def test_chat_turns_reuse_the_earlier_turns(text_model, text_model_dir, numpy_backend):
    chat = text_model.new_chat(system="be brief", temperature=0, max_tokens=6, ignore_eos=True)
    one = chat.send("hello")
    two = chat.send("and again")
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.messages[2]["content"] == one.text
    assert two.cached_tokens >= one.prompt_tokens // BLOCK_SIZE * BLOCK_SIZE > 0
    with shaderbay.load(text_model_dir, backend=numpy_backend) as fresh:
        alone = fresh.complete(chat.messages[:-1], 6, temperature=0, ignore_eos=True)
    assert alone.cached_tokens == 0 and alone.text == two.text
    events = chat.stream("a third")
    shown = next(events).text
    events.close()
    assert chat.messages[-1] == {"role": "assistant", "content": shown}  # what was shown stays
    chat.reset()
    assert [m["role"] for m in chat.messages] == ["system"]
    chat.reset(system="")
    assert chat.messages == []


def test_chat_needs_a_template(tiny):
    with pytest.raises(ModelError, match="no chat template"):
        tiny.new_chat()
