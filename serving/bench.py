"""What the server adds to one request: streamed tokens/s through HTTP against the model directly,
and the time to first token the server adds (medians over alternating runs).

    python -m shaderbay.serving.bench --model CHECKPOINT --backend numpy --tokens 200 --runs 15
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

from . import adapter
from .process import serve

MESSAGES = [{"role": "user", "content": "hello world"}]


def direct_run(model, tokens: int) -> tuple[float, float]:
    """(time to first token, tokens/s after it) of one generation through the model's events."""
    request = adapter.Request(MESSAGES, tokens, {"temperature": 0, "ignore_eos": True})
    t0 = time.perf_counter()
    first = last = None
    count = 0
    for item in adapter.events(model, request):
        if isinstance(item, adapter.TextEvent):
            last = time.perf_counter()
            first = first or last
            count += len(item.token_ids)
    return first - t0, (count - 1) / (last - first)


def http_run(url: str, model_id: str, tokens: int) -> tuple[float, float]:
    """The same through a streamed chat completion: one SSE chunk a token."""
    body = {"model": model_id, "messages": MESSAGES, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    body |= {"stream": True}
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port)
    t0 = time.perf_counter()
    first = last = None
    connection.request("POST", where.path + "/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"the server answered {response.status}: {response.read().decode()}")
    for line in response:
        if line.startswith(b"data: {"):
            last = time.perf_counter()
            first = first or last
    connection.close()
    chunks = tokens + 1  # the role chunk comes with the first token
    return first - t0, (chunks - 2) / (last - first)


def main(argv: list[str] | None = None) -> None:
    import shaderbay

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: the default model)")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)
    model_args = ["--backend", args.backend] + (["--model", args.model] if args.model else [])
    with shaderbay.load(args.model, backend=args.backend) as model, tempfile.TemporaryDirectory() as tmp:
        with serve(*model_args, log=Path(tmp) / "serve.log") as url:
            direct_run(model, 8), http_run(url, model.name, 8)  # warm both up
            runs = {"direct": [], "http": [], "direct_ttft": [], "http_ttft": []}
            for _ in range(args.runs):  # alternating, so that both see the same machine
                runs["direct"].append(direct_run(model, args.tokens)[1])
                runs["http"].append(http_run(url, model.name, args.tokens)[1])
                for _ in range(3):  # time to first token of short requests (prefill, one token, two more)
                    runs["direct_ttft"].append(direct_run(model, 3)[0])
                    runs["http_ttft"].append(http_run(url, model.name, 3)[0])
    m = {name: statistics.median(values) for name, values in runs.items()}
    ratio = statistics.median(h / d for h, d in zip(runs["http"], runs["direct"], strict=True))
    print(f"{model.name} on {args.backend}: medians of {args.runs} requests of {args.tokens} tokens, ", end="")
    print(f"{3 * args.runs} of 3 tokens, each way")
    print(f"  tokens/s      direct {m['direct']:8.1f}  HTTP stream {m['http']:8.1f}  ", end="")
    print(f"ratio (median of pairs) {ratio:6.1%}")
    added = m["http_ttft"] - m["direct_ttft"]
    print(f"  first token   direct {m['direct_ttft'] * 1e3:6.2f} ms  HTTP {m['http_ttft'] * 1e3:6.2f} ms  ", end="")
    print(f"added {added * 1e3:5.2f} ms")


if __name__ == "__main__":
    main()
