"""`python -m shaderbay.serving.bench --clients N`: N streaming clients at once through the server,
against the engine directly on the same backend and model (issue 16's 64-client target).

The engine figure is `shaderbay bench --streams N`'s (benches/model_streams.py): N random prompts of
`prompt_tokens`, greedy, EOS ignored; once every stream has its first token and STREAM_WARM_STEPS
more steps have run, `new_tokens` steps of all N rows are timed. The HTTP figure takes the same
window as the server runs it, each client on its own connection streaming a completion of the same
shape: once the last client has its first chunk, the engine's token count (the server's /metrics,
`shaderbay_step_tokens_sum`) is followed until N * STREAM_WARM_STEPS more tokens (the window's
start) and then N * new_tokens more (its end); the figure is the tokens made between the two
readings over the time between them. The clients ask for what the engine's requests may make
(Settings.stream_tokens) and a little more, so that none finishes inside the window (a run where
one does counts as no figure). End to end (first request sent to the last token) is shown beside it.
"""

from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import shaderbay
from shaderbay.benches.model_measure import Run
from shaderbay.benches.model_settings import STREAM_WARM_STEPS, Settings
from shaderbay.benches.model_streams import prompts, streams_once
from shaderbay.benches.probe import Probe
from shaderbay.plugins import create_backend

from .process import serve

STEP_TOKENS = "shaderbay_step_tokens_sum"


@contextmanager
def engine_run(model: str | None, backend: str, n: int, settings: Settings) -> Iterator[tuple[Run, list[list[int]]]]:
    """The model loaded as `shaderbay bench --streams n` loads it, and the n random prompts it runs."""
    device = create_backend(backend)
    loaded = shaderbay.load(model, backend=device, max_context=settings.context(), streams=n)
    run = Run(backend, backend=device, probe=Probe(device, active=False), model=loaded)
    try:
        yield run, prompts(np.random.default_rng(settings.seed), loaded.config.vocab_size, n, settings.prompt_tokens)
    finally:
        run.close()


def engine_rate(run: Run, batch: list[list[int]], settings: Settings) -> float:
    """`shaderbay bench --streams N`'s aggregate decode rate, one run."""
    timed = streams_once(run, batch, settings)
    return timed.tokens / (timed.wall_ns / 1e9)


POLL_S = 0.02  # between /metrics readings while the window is followed: each is an exact (time, count)


@dataclass
class Window:
    """What one HTTP run's clients saw, and the engine's (time, tokens so far) at the window's ends."""

    clients: int
    start: tuple[float, float] | None = None
    end: tuple[float, float] | None = None
    first_finish: float | None = None  # when the first client had its last chunk

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.first_chunks = 0
        self.all_started = threading.Event()
        self.all_done = threading.Event()  # every client has returned: stop following


def _engine_tokens(url: str) -> tuple[float, float]:
    """(time, tokens the engine has made): the time the middle of the /metrics request's, which a
    busy server answers late."""
    where = urlsplit(url)
    t0 = time.perf_counter()
    connection = http.client.HTTPConnection(where.hostname, where.port)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    line = next(ln for ln in text.splitlines() if ln.startswith(STEP_TOKENS + " "))
    return (t0 + time.perf_counter()) / 2, float(line.split()[1])


def _follow(url: str, window: Window, warm_tokens: int, window_tokens: int) -> None:
    """Once every client has its first chunk: the window's two readings (see the module docstring)."""
    window.all_started.wait()
    _, joined = _engine_tokens(url)
    reading = _engine_tokens(url)
    while reading[1] < joined + warm_tokens and not window.all_done.is_set():
        time.sleep(POLL_S)
        reading = _engine_tokens(url)
    window.start = reading
    while reading[1] < window.start[1] + window_tokens and not window.all_done.is_set():
        time.sleep(POLL_S)
        reading = _engine_tokens(url)
    window.end = reading


def _client(url: str, body: dict, window: Window, out: list) -> None:
    """One streamed completion; appends (completion tokens, time of its last token)."""
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
    connection.request("POST", where.path + "/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"the server answered {response.status}: {response.read().decode()}")
    first, last, usage = True, 0.0, 0
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
            continue
        last = time.perf_counter()
        if first:
            first = False
            with window.lock:
                window.first_chunks += 1
                if window.first_chunks == window.clients:
                    window.all_started.set()
    connection.close()
    with window.lock:
        window.first_finish = min(window.first_finish or last, last)
    out.append((usage, last))


def http_run(url: str, model_id: str, batch: list[list[int]], settings: Settings) -> tuple[float, float, int]:
    """(windowed aggregate tok/s, end-to-end tok/s, tokens received) of one run of len(batch) clients."""
    n = len(batch)
    window, out = Window(n), []
    base = {"model": model_id, "max_tokens": client_tokens(settings, n), "temperature": 0, "ignore_eos": True}
    base |= {"stream": True, "stream_options": {"include_usage": True}}
    threads = [threading.Thread(target=_client, args=(url, base | {"prompt": p}, window, out)) for p in batch]
    follower = threading.Thread(target=_follow, args=(url, window, n * STREAM_WARM_STEPS, n * settings.new_tokens))
    t0 = time.perf_counter()
    for t in [follower, *threads]:
        t.start()
    for t in threads:
        t.join()
    window.all_done.set()
    window.all_started.set()  # a client that failed before its first chunk: the follower still ends
    follower.join()
    received = sum(k for k, _ in out)
    end_to_end = received / (max(last for _, last in out) - t0)
    if window.end is None or window.first_finish is None or window.first_finish < window.end[0]:
        return float("nan"), end_to_end, received  # a client finished inside the window
    rate = (window.end[1] - window.start[1]) / (window.end[0] - window.start[0])
    return rate, end_to_end, received


def client_tokens(settings: Settings, n: int) -> int:
    """What each client asks for: the engine's requests' budget and a quarter of the window more,
    as the clients' requests reach the engine over a few steps rather than at once."""
    return settings.stream_tokens(n) + settings.new_tokens // 4


def main(args) -> None:
    """The engine's figure, then the server's (a child process) on the same prompts; one table."""
    n = args.clients
    settings = Settings(backends=[args.backend], new_tokens=args.tokens, prompt_tokens=args.prompt_tokens)
    server_args = ["--backend", args.backend, "--max-streams", str(n), "--max-context", str(settings.context())]
    server_args += ["--model", args.model] if args.model else []
    server_args += ["--stream-interval", args.stream_interval] if args.stream_interval is not None else []
    engine, runs = [], []
    with (
        engine_run(args.model, args.backend, n, settings) as (run, batch),
        tempfile.TemporaryDirectory() as tmp,
        serve(*server_args, log=Path(tmp) / "serve.log") as url,
    ):
        model_id = _model_id(url)
        engine_rate(run, batch, settings), http_run(url, model_id, batch, settings)  # warm both up
        for _ in range(args.runs):  # alternating, so that both see the same machine
            engine.append(engine_rate(run, batch, settings))
            runs.append(http_run(url, model_id, batch, settings))
    rate, e2e, direct = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
                         statistics.median(engine))  # fmt: skip
    print(
        f"{args.model or 'the default model'} on {args.backend}: {n} clients, {args.prompt_tokens}-token prompts, ",
        end="",
    )
    print(f"{args.tokens} new tokens each; medians of {args.runs} alternating runs")
    print(f"  engine (shaderbay bench --streams {n}'s figure)  {direct:9.1f} tok/s")
    print(f"  HTTP, {n} streaming clients, the same window   {rate:9.1f} tok/s  {rate / direct:6.1%} of the engine's")
    print(f"  HTTP end to end (first request to last token)  {e2e:9.1f} tok/s")
    received = [r[2] for r in runs]
    asked = n * client_tokens(settings, n)
    lost = "none lost" if all(r == asked for r in received) else "SOME LOST"
    print(f"  tokens received per run {received} of {asked}: {lost}")


def _model_id(url: str) -> str:
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port)
    connection.request("GET", where.path + "/models")
    model_id = json.loads(connection.getresponse().read())["data"][0]["id"]
    connection.close()
    return model_id
