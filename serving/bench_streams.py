"""`python -m shaderbay.serving.bench --clients N`: N streaming clients at once through the server,
against the engine directly on the same backend and model (issue 16's 64-client target).

The engine figure is `shaderbay bench --streams N`'s (benches/model_streams.py): N random prompts of
`prompt_tokens`, `new_tokens` each, EOS ignored, greedy; the aggregate rate over the window from
the step after the last one has its first token until the first one finishes. The HTTP figure
takes the same window as the clients see it, each on its own connection streaming a completion of
the same shape: from the moment the last client has its first chunk until one has its last, the
tokens the engine made in it (the server's /metrics, `shaderbay_step_tokens_sum`, read at both
ends) over its wall time. End to end (first request sent to the last token) is shown beside it.
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
from shaderbay.benches.model_settings import Settings
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


@dataclass
class Window:
    """What the clients of one HTTP run saw; (time, engine tokens so far) at the window's two ends."""

    clients: int
    start: tuple[float, float] | None = None
    end: tuple[float, float] | None = None
    first_chunks: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()


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
                if window.first_chunks == window.clients:  # the last one has its first token
                    window.start = _engine_tokens(url)
        if chunk["choices"][0]["finish_reason"] is not None:
            with window.lock:
                if window.end is None and window.start is not None:  # the first one to finish
                    window.end = _engine_tokens(url)
    connection.close()
    out.append((usage, last))


def http_run(url: str, model_id: str, batch: list[list[int]], new_tokens: int) -> tuple[float, float, int]:
    """(windowed aggregate tok/s, end-to-end tok/s, tokens received) of one run of len(batch) clients."""
    window, out = Window(len(batch)), []
    base = {"model": model_id, "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    base["stream_options"] = {"include_usage": True}
    threads = [threading.Thread(target=_client, args=(url, base | {"prompt": p}, window, out)) for p in batch]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    received = sum(n for n, _ in out)
    end_to_end = received / (max(last for _, last in out) - t0)
    if window.start is None or window.end is None or window.end[0] <= window.start[0]:
        return float("nan"), end_to_end, received  # every stream finished before the last began
    rate = (window.end[1] - window.start[1]) / (window.end[0] - window.start[0])
    return rate, end_to_end, received


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
        engine_rate(run, batch, settings), http_run(url, model_id, batch, args.tokens)  # warm both up
        for _ in range(args.runs):  # alternating, so that both see the same machine
            engine.append(engine_rate(run, batch, settings))
            runs.append(http_run(url, model_id, batch, args.tokens))
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
    lost = "none lost" if all(r == n * args.tokens for r in received) else "SOME LOST"
    print(f"  tokens received per run {received} of {n * args.tokens}: {lost}")


def _model_id(url: str) -> str:
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port)
    connection.request("GET", where.path + "/models")
    model_id = json.loads(connection.getresponse().read())["data"][0]["id"]
    connection.close()
    return model_id
