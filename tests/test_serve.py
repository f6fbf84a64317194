"""`shaderbay serve` as a real process on localhost, spoken to with the official `openai` client.

The model is a tiny random-weight checkpoint with a real tokenizer (a few ms a request on numpy);
`test_default_model` repeats the essentials on the default model (slow).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import faulty_backend
import openai
import pytest
import shaderbay
from shaderbay.serving.handover import LOOP_CHUNKS_PER_S, Pace
from shaderbay.serving.process import serve

KEY = "test-key"
CONTEXT = 4096  # the tiny model's
HELLO = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="session")
def tiny_chat_checkpoint(text_model_dir, tmp_path_factory):
    """The tiny text model with a context of 4,096 positions, so that a long generation is there to
    be cut short by a client leaving."""
    out = tmp_path_factory.mktemp("tiny-chat") / "tiny-chat"
    shutil.copytree(text_model_dir, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | {"max_position_embeddings": CONTEXT}))
    return out


@pytest.fixture(scope="module")
def base_url(tiny_chat_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    args = ("--backend", "numpy", "--api-key", KEY, "--max-streams", "40")
    with serve("--model", str(tiny_chat_checkpoint), *args, log=log) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


@pytest.fixture(scope="module")
def direct(tiny_chat_checkpoint):
    """The same checkpoint loaded in this process: what the server must answer."""
    with shaderbay.load(tiny_chat_checkpoint, backend="numpy") as model:
        yield model


def test_chat_and_completion_equal_the_model(client, model_id, direct):
    chat = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=12, temperature=0)
    choice = chat.choices[0]
    assert choice.message.content == direct.chat(HELLO, 12)
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert chat.usage.prompt_tokens == len(direct.encode_chat(HELLO))
    assert chat.usage.completion_tokens == 12
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + 12

    text = client.completions.create(model=model_id, prompt="hello world", max_tokens=10, temperature=0)
    assert text.choices[0].text == direct.generate("hello world", 10)
    assert text.usage.prompt_tokens == len(direct.encode("hello world"))

    ids = direct.encode("hello")
    by_ids = client.completions.create(model=model_id, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == direct.generate(ids, 6)


def test_streams_equal_whole_answers(client, model_id):
    whole = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=20, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=model_id,
            messages=HELLO,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 20 and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens

    whole = client.completions.create(model=model_id, prompt="hello", max_tokens=15, temperature=0)
    stream = client.completions.create(model=model_id, prompt="hello", max_tokens=15, temperature=0, stream=True)
    pieces = list(stream)
    assert "".join(c.choices[0].text for c in pieces) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"


def test_seed_reproduces_a_sampled_answer(client, model_id):
    def sample(seed: int) -> str:
        options = dict(model=model_id, messages=HELLO, max_tokens=24, temperature=1.0, seed=seed)
        return client.chat.completions.create(**options).choices[0].message.content

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


def test_n_choices(client, model_id):
    options = dict(model=model_id, prompt="hello", max_tokens=8, temperature=1.0, seed=3)
    answer = client.completions.create(n=3, **options)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert answer.usage.completion_tokens == 24
    # choice i samples with seed + i
    assert answer.choices[1].text == client.completions.create(**dict(options, seed=4)).choices[0].text
    texts = ["", "", ""]
    for chunk in client.completions.create(n=3, stream=True, **options):
        texts[chunk.choices[0].index] += chunk.choices[0].text
    assert texts == [c.text for c in answer.choices]


def test_stop_string(client, model_id):
    free = client.completions.create(model=model_id, prompt="hello", max_tokens=30, temperature=0).choices[0].text
    stop = free[10:12]
    cut = client.completions.create(model=model_id, prompt="hello", max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].text == free[: free.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_logprobs(client, model_id, direct):
    chat = client.chat.completions.create(
        model=model_id, messages=HELLO, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    content = chat.choices[0].logprobs.content
    greedy = list(direct.tokens(direct.encode_chat(HELLO), 8))
    assert [t.token for t in content] == [direct.decode([i]) for i in greedy]
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.logprob <= 0
        # greedy: the chosen token is the most likely one
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob

    text = client.completions.create(model=model_id, prompt="hello", max_tokens=5, temperature=0, logprobs=2)
    lp = text.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(len(top) <= 2 for top in lp.top_logprobs)


def test_streamed_logprobs_equal_whole_ones(client, model_id):
    """A stream's log-probabilities (in a chunk after each choice's text: see app._chunks) are the
    non-streamed answer's; the `openai` client's stream accumulator gathers them into the message."""
    options = dict(model=model_id, messages=HELLO, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    whole = client.chat.completions.create(**options).choices[0]
    chunks = [c.choices[0] for c in client.chat.completions.create(stream=True, **options)]
    assert "".join(c.delta.content or "" for c in chunks) == whole.message.content
    streamed = [t for c in chunks if c.logprobs is not None for t in c.logprobs.content]
    _assert_same_logprobs(streamed, whole.logprobs.content, top=3)
    assert chunks[-1].finish_reason == "length" and chunks[-1].logprobs is not None
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    with client.chat.completions.stream(**options) as stream:
        for _ in stream:
            pass
        accumulated = stream.current_completion_snapshot.choices[0]
    assert accumulated.message.content == whole.message.content
    _assert_same_logprobs(accumulated.logprobs.content, whole.logprobs.content, top=3)

    options = dict(model=model_id, prompt="hello", max_tokens=5, temperature=0, logprobs=2, n=2)
    whole = client.completions.create(**options).choices
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **options)]
    for index in (0, 1):
        mine = [c for c in chunks if c.index == index]
        assert "".join(c.text for c in mine) == whole[index].text
        scored = [c.logprobs for c in mine if c.logprobs is not None]
        assert len(scored) == 1 and mine[-1].finish_reason == "length"
        assert scored[0].tokens == whole[index].logprobs.tokens
        assert scored[0].token_logprobs == pytest.approx(whole[index].logprobs.token_logprobs, abs=1e-5)
        assert all(len(top) == 2 for top in scored[0].top_logprobs)


def _assert_same_logprobs(got, expected, top: int) -> None:
    assert [t.token for t in got] == [t.token for t in expected] and got
    for g, e in zip(got, expected, strict=True):
        assert g.logprob == pytest.approx(e.logprob, abs=1e-5)
        assert len(g.top_logprobs) == top
        assert [a.token for a in g.top_logprobs] == [a.token for a in e.top_logprobs]
        assert [a.logprob for a in g.top_logprobs] == pytest.approx([a.logprob for a in e.top_logprobs], abs=1e-5)


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"temperature": "0.5"}, "temperature", "valid number"),
        ({"max_tokens": 1.5}, "max_tokens", "valid integer"),
        ({"max_tokens": True}, "max_tokens", "valid integer"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"top_logprobs": 2}, "top_logprobs", "logprobs: true"),
        ({"top_p": 7}, None, "top_p"),
        ({"max_tokens": CONTEXT}, None, "context"),
        ({"presence_penalty": 0.5}, "presence_penalty", "repetition_penalty"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "user"),
    ],
)
def test_bad_requests_get_400(client, model_id, body, param, message):
    request = {"model": model_id, "messages": HELLO, "max_tokens": 4, **body}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**request)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert message in error["message"]
    if param:
        assert error["param"] == param


def test_bad_completion_prompts_get_400(client, model_id):
    for prompt, message in [([10**6], "vocab"), ("", "empty"), (["a", "b"], "one prompt")]:
        with pytest.raises(openai.BadRequestError, match=message):
            client.completions.create(model=model_id, prompt=prompt, max_tokens=2)


def test_unknown_model_and_missing_key(client, base_url):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2)
    assert caught.value.body["code"] == "model_not_found"
    keyless = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        keyless.models.list()


def test_health_and_metrics(client, model_id, base_url):
    client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=3)
    root = base_url.removesuffix("/v1")
    health = json.load(urllib.request.urlopen(root + "/health"))
    assert health["status"] == "ok" and health["model"] == model_id and health["backend"] == "numpy"
    assert health["batch_invariant"] is True
    text = urllib.request.urlopen(root + "/metrics").read().decode()
    assert re.search(r'shaderbay_requests_total\{endpoint="/v1/chat/completions",status="200"\} [1-9]', text)
    assert _metric(text, "shaderbay_completion_tokens_total") >= 3
    assert _metric(text, "shaderbay_time_to_first_token_seconds_count") >= 1
    assert _metric(text, "shaderbay_queue_length") == 0


def _metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


def _bucket(text: str, name: str, le: int) -> float:
    return float(re.search(rf'^{name}_bucket{{le="{le}.0"}} (\S+)$', text, re.MULTILINE).group(1))


def _metrics(base_url: str) -> str:
    return urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics").read().decode()


def _completion_tokens(base_url: str) -> float:
    return _metric(_metrics(base_url), "shaderbay_completion_tokens_total")


def test_32_streams_at_once(client, model_id, base_url):
    """32 concurrent streaming clients each get their whole greedy answer, equal to the answer alone;
    a client that disconnects early and bad requests among them disturb nobody."""
    prompts = [[{"role": "user", "content": f"hello {i}"}] for i in range(32)]
    alone = [client.chat.completions.create(model=model_id, messages=p, max_tokens=24, temperature=0) for p in prompts]
    before = _completion_tokens(base_url)
    aclient = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)

    async def streamed(messages):
        stream = await aclient.chat.completions.create(
            model=model_id, messages=messages, max_tokens=24, temperature=0, stream=True
        )
        pieces, finish = [], None
        async for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        return "".join(pieces), finish

    async def leaver():
        stream = await aclient.chat.completions.create(
            model=model_id, messages=HELLO, max_tokens=CONTEXT - 64, stream=True, extra_body={"ignore_eos": True}
        )
        async for _ in stream:
            break
        await stream.close()

    async def refused():
        with pytest.raises(openai.BadRequestError):
            await aclient.chat.completions.create(
                model=model_id, messages=HELLO, max_tokens=4, stream=True, extra_body={"top_k": -1}
            )

    async def everyone():
        jobs = [streamed(p) for p in prompts[:16]] + [leaver(), refused()] + [streamed(p) for p in prompts[16:]]
        jobs += [refused() for _ in range(3)]
        return await asyncio.gather(*jobs)

    steps_before = _metrics(base_url)
    results = asyncio.run(everyone())
    answers = results[:16] + results[18:34]
    assert answers == [(a.choices[0].message.content, a.choices[0].finish_reason) for a in alone]
    # the leaver asked for 4,032 tokens and left after its first: the server stopped generating for it
    others = sum(c.usage.completion_tokens for c in alone)
    assert _completion_tokens(base_url) - before - others < 1000
    # they were decoded together: most of their tokens came from steps that advanced 8 or more sequences
    text = _metrics(base_url)
    together = _metric(text, "shaderbay_step_tokens_sum") - _metric(steps_before, "shaderbay_step_tokens_sum")
    alone_steps = _bucket(text, "shaderbay_step_tokens", 4) - _bucket(steps_before, "shaderbay_step_tokens", 4)
    assert alone_steps * 4 < together / 2, f"{together} tokens, {alone_steps} steps of at most 4 sequences"
    _wait_for(base_url, running=0, queue=0)  # the leaver's sequence too
    # and the server serves on
    after = client.chat.completions.create(model=model_id, messages=prompts[0], max_tokens=24, temperature=0)
    assert after.choices[0].message.content == alone[0].choices[0].message.content


def test_max_streams_queue_and_429(tiny_chat_checkpoint, tmp_path):
    """--max-streams 2 decodes two sequences together, --max-queue 1 lets one more wait, the next gets
    a 429; a client that disconnects frees its sequence at once, and the waiting one takes its place."""
    args = ("--model", str(tiny_chat_checkpoint), "--backend", "numpy", "--max-streams", "2", "--max-queue", "1")
    with serve(*args, "--no-batch-invariance", log=tmp_path / "serve.log") as url, ThreadPoolExecutor(1) as pool:
        health = json.load(urllib.request.urlopen(url.removesuffix("/v1") + "/health"))
        assert health["batch_invariant"] is False
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        model_id = client.models.list().data[0].id
        long = dict(model=model_id, messages=HELLO, max_tokens=CONTEXT - 64, extra_body={"ignore_eos": True})

        def third() -> list[str | None]:  # its response starts once it is decoded
            chunks = client.chat.completions.create(stream=True, **dict(long, max_tokens=2))
            return [c.choices[0].finish_reason for c in chunks]

        with client.chat.completions.create(stream=True, **long) as first:
            next(iter(first))
            with client.chat.completions.create(stream=True, **long) as second:
                next(iter(second))
                _wait_for(url, running=2, queue=0)
                waiting = pool.submit(third)
                _wait_for(url, running=2, queue=1)
                with pytest.raises(openai.RateLimitError, match="max-queue"):
                    client.chat.completions.create(**long)
            assert waiting.result(timeout=60)[-1] == "length"  # the second's place
        _wait_for(url, running=0, queue=0)
        # the two long ones were cut short: the engine made far fewer than their 2 x 4,032 tokens
        assert _metric(_metrics(url), "shaderbay_step_tokens_sum") < CONTEXT - 64


def test_a_failing_step_is_a_500_and_the_server_goes_on(tiny_chat_checkpoint, direct, tmp_path, monkeypatch):
    """An engine step that raises (a planted fault: tests/faulty_backend.py) gives its requests a 500
    in OpenAI's shape (in the stream, once it has started), is logged, and the next requests are served."""
    prompt = direct.encode("hello")
    greedy = list(direct.tokens(prompt, 16))
    # the fault: the first token the greedy answer makes from its fourth on that it has not made before
    k = next(i for i in range(3, len(greedy)) if greedy[i] not in prompt + greedy[:i])
    monkeypatch.setenv(faulty_backend.ENV_TOKEN, str(greedy[k]))
    monkeypatch.setenv("PYTHONPATH", faulty_backend.install(tmp_path / "site"))
    log = tmp_path / "serve.log"
    with serve("--model", str(tiny_chat_checkpoint), "--backend", faulty_backend.NAME, log=log) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        model_id = client.models.list().data[0].id
        with pytest.raises(openai.InternalServerError) as caught:  # the prefill fails
            client.completions.create(model=model_id, prompt=[greedy[k]], max_tokens=4)
        assert caught.value.body["type"] == "server_error" and "planted fault" in caught.value.body["message"]

        stream = client.completions.create(model=model_id, prompt=prompt, max_tokens=16, temperature=0, stream=True)
        received = []
        with pytest.raises(openai.APIError) as caught:  # a decode step fails: the response has started
            for chunk in stream:
                received.append(chunk.choices[0].text)
        assert not isinstance(caught.value, openai.APIStatusError) and received
        assert caught.value.body["type"] == "server_error" and "planted fault" in caught.value.body["message"]
        assert direct.decode(greedy[:k]).startswith("".join(received))

        # the same prompt, stopping before the fault, is served (its log-probabilities too)
        after = client.completions.create(model=model_id, prompt=prompt, max_tokens=k, temperature=0, logprobs=1)
        assert after.choices[0].text == direct.generate(prompt, k) and len(after.choices[0].logprobs.tokens) == k
        _wait_for(url, running=0, queue=0)
    text = log.read_text()
    assert text.count("the engine failed a step (RuntimeError: planted fault") == 2
    # each failure logged once, with its traceback (not again per request)
    assert text.count("Traceback") == 2 and 'raise RuntimeError(f"planted fault' in text
    assert "unexpected error while serving a request" not in text


def _wait_for(url: str, running: int, queue: int, timeout: float = 5.0) -> None:
    """Until /metrics shows `running` sequences decoding and `queue` waiting (a disconnect reaches
    the server a moment after the client closes)."""
    deadline = time.monotonic() + timeout
    while True:
        text = _metrics(url)
        now = (_metric(text, "shaderbay_running_sequences"), _metric(text, "shaderbay_queue_length"))
        if now == (running, queue):
            return
        assert time.monotonic() < deadline, f"running and waiting sequences: {now}, not {(running, queue)}"
        time.sleep(0.01)


@pytest.mark.slow
def test_default_model(tmp_path):
    """The default model through the server equals the model directly (greedy)."""
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    with shaderbay.load(backend="numpy") as model:
        expected = model.chat(question, 24)
        name = model.name
    with serve("--backend", "numpy", log=tmp_path / "serve.log") as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        model_id = client.models.list().data[0].id
        answer = client.chat.completions.create(model=model_id, messages=question, max_tokens=24, temperature=0)
        assert answer.choices[0].message.content == expected
        assert expected.strip() and name


def test_chunk_interval_grows_with_the_streams():
    """Many streams share the event loop's chunk budget; a few keep the asked interval; 0 stays 0."""
    pace = Pace(0.01)
    assert pace.interval == 0.01
    pace.streams(64)
    assert pace.interval == pytest.approx(64 / LOOP_CHUNKS_PER_S) and pace.interval > 0.01
    pace.streams(2)
    assert pace.interval == 0.01
    every_token = Pace(0.0)
    every_token.streams(64)
    assert every_token.interval == 0.0
