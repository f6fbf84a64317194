"""What the server adds to one request: streamed tokens/s through HTTP against the model directly,
and the time to first token the server adds (medians over alternating runs); with --clients N,
N streaming clients at once against the engine's N-stream figure (bench_streams.py).

    python -m shaderbay.serving.bench --model CHECKPOINT --backend numpy --tokens 200 --runs 15
    python -m shaderbay.serving.bench --model synthetic:smollm2-135m --backend vulkan --clients 64 --tokens 128
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from . import adapter
from .process import serve
from .worker import DEFAULT_MAX_STREAMS

PROMPT_TOKENS = 16


def prompt(model, run: int) -> list[int]:
    """Token ids of a prompt of its own for each run (the same both ways), so that no run is the cached
    one before it; ids rather than text, so that a model without a tokenizer (synthetic:NAME) runs too."""
    return np.random.default_rng(run + 1).integers(0, model.config.vocab_size, PROMPT_TOKENS).tolist()


def direct_run(model, tokens: int, run: int) -> tuple[float, float, float]:
    """(time to first token, tokens/s from the request to the last token, tokens/s after the first)
    of one generation through the model's events."""
    request = adapter.Request(prompt(model, run), tokens, {"temperature": 0, "ignore_eos": True})
    t0 = time.perf_counter()
    first = last = None
    count = 0
    for item in adapter.events(model, request):
        if isinstance(item, adapter.TextEvent):
            last = time.perf_counter()
            first = first or last
            count += len(item.token_ids)
    return first - t0, count / (last - t0), (count - 1) / (last - first)


def http_run(url: str, model, tokens: int, run: int) -> tuple[float, float, float]:
    """The same through a streamed completion."""
    body = {"model": model.name, "prompt": prompt(model, run), "max_tokens": tokens, "temperature": 0}
    body |= {"ignore_eos": True, "stream": True}
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port)
    t0 = time.perf_counter()
    first = last = None
    connection.request("POST", where.path + "/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"the server answered {response.status}: {response.read().decode()}")
    for line in response:
        if line.startswith(b"data: {"):
            last = time.perf_counter()
            first = first or last
    connection.close()
    return first - t0, tokens / (last - t0), (tokens - 1) / (last - first)  # the first chunk: the first token


def main(argv: list[str] | None = None) -> None:
    import shaderbay

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory or synthetic:NAME (default: the default model)")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=15, help="alternating runs (--clients: runs each way)")
    parser.add_argument("--stream-interval", metavar="MS", help="the server's --stream-interval (default: its own)")
    parser.add_argument("--clients", type=int, help="N streaming clients at once, against the engine's N streams")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="with --clients: each prompt's (%(default)s)")
    parser.add_argument(
        "--max-streams",
        type=int,
        default=DEFAULT_MAX_STREAMS,
        help="one request: the server's --max-streams, and the model alone loaded for as many (%(default)s)",
    )
    parser.add_argument(
        "--no-batch-invariance", action="store_true", help="the server's option, and the model alone loaded so too"
    )
    args = parser.parse_args(argv)
    if args.clients:
        from .bench_streams import main as clients_main

        return clients_main(args)
    model_args = ["--backend", args.backend] + (["--model", args.model] if args.model else [])
    server_args = ["--stream-interval", args.stream_interval] if args.stream_interval is not None else []
    server_args += ["--max-streams", str(args.max_streams)] + (["--no-batch-invariance"] * args.no_batch_invariance)
    # the model alone loaded as the server loads it: the same kernels, so the ratio is the server's own cost
    invariant = not args.no_batch_invariance
    load = {"backend": args.backend, "streams": args.max_streams, "batch_invariant": invariant}
    with shaderbay.load(args.model, **load) as model, tempfile.TemporaryDirectory() as tmp:
        with serve(*model_args, *server_args, log=Path(tmp) / "serve.log") as url:
            direct_run(model, 8, -1), http_run(url, model, 8, -1)  # warm both up
            direct, http = [], []
            for run in range(args.runs):  # alternating, so that both see the same machine
                direct.append(direct_run(model, args.tokens, run))
                http.append(http_run(url, model, args.tokens, run))
    ttft = [statistics.median(r[0] for r in runs) for runs in (direct, http)]
    print(f"{model.name} on {args.backend} (--max-streams {args.max_streams}, batch-invariant: {invariant}): ", end="")
    print(f"medians of {args.runs} requests of {args.tokens} tokens each way")
    for i, what in ((1, "tokens/s, request to last token"), (2, "tokens/s after the first token")):
        rate = [statistics.median(r[i] for r in runs) for runs in (direct, http)]
        ratio = statistics.median(h[i] / d[i] for h, d in zip(http, direct, strict=True))
        print(f"  {what:32} direct {rate[0]:8.1f}  HTTP {rate[1]:8.1f}  ratio (median of pairs) {ratio:6.1%}")
    print(f"  {'first token':32} direct {ttft[0] * 1e3:6.2f} ms  HTTP {ttft[1] * 1e3:6.2f} ms  ", end="")
    print(f"added {(ttft[1] - ttft[0]) * 1e3:5.2f} ms")


if __name__ == "__main__":
    main()
