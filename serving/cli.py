"""`shaderbay serve`: the model behind an OpenAI-compatible HTTP API (see serving.app)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from .worker import DEFAULT_MAX_STREAMS, DEFAULT_STREAM_INTERVAL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", metavar="PATH", help="a checkpoint directory (default: SmolLM2-135M-Instruct, converted once)"
    )
    parser.add_argument(
        "--backend", metavar="NAME", help="numpy, wgpu, vulkan, ... (default: SHADERBAY_BACKEND, config, best)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (%(default)s; 0 picks a free one)")
    parser.add_argument(
        "--max-streams",
        type=int,
        metavar="N",
        default=DEFAULT_MAX_STREAMS,
        help="sequences decoded together (a choice of a request is one); the KV cache holds this many of "
        "the full context (%(default)s)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        metavar="N",
        default=256,
        help="sequences waiting for a place among them; more get HTTP 429 (%(default)s)",
    )
    parser.add_argument(
        "--stream-interval",
        type=float,
        default=DEFAULT_STREAM_INTERVAL * 1e3,
        metavar="MS",
        help="after a stream's first chunk, at most one chunk per MS milliseconds, longer with many streams "
        "(%(default)g; at most 500 chunks a second in all); tokens made faster share one (0: a chunk per token, "
        "as llama.cpp's server sends)",
    )
    parser.add_argument(
        "--no-batch-invariance",
        action="store_true",
        help="one request alone decodes on the matrix-vector kernels, batches on the tensor cores (faster alone; "
        "an answer's last bits may then depend on the other requests)",
    )
    parser.add_argument(
        "--api-key", metavar="KEY", help="require `Authorization: Bearer KEY` on /v1/ (default: no key)"
    )
    parser.add_argument(
        "--max-context", type=int, metavar="N", help="KV-cache positions (default: the model's, at most 4096)"
    )


def run(args: argparse.Namespace) -> int:
    import shaderbay
    import uvicorn
    from shaderbay.errors import ConfigError

    from .app import create_app

    if args.max_streams < 1:
        raise ConfigError(f"--max-streams must be at least 1, got {args.max_streams}")
    if args.max_queue < 0:
        raise ConfigError(f"--max-queue must be at least 0, got {args.max_queue}")
    if not 0 <= args.stream_interval <= 1000:
        raise ConfigError(f"--stream-interval must be 0 to 1000 ms, got {args.stream_interval}")
    sock = _listen(args.host, args.port)
    model = shaderbay.load(
        args.model,
        backend=args.backend,
        max_context=args.max_context,
        streams=args.max_streams,
        batch_invariant=not args.no_batch_invariance,
    )
    try:
        interval = args.stream_interval / 1e3
        app = create_app(
            model,
            max_streams=args.max_streams,
            max_queue=args.max_queue,
            api_key=args.api_key,
            stream_interval=interval,
        )
        host, port = sock.getsockname()[:2]
        print(
            f"serving {model.name} on {model.backend.name} ({model.backend.caps.device}) at http://{host}:{port}/v1",
            file=sys.stderr,
            flush=True,
        )
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        model.close()
        sock.close()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so that a taken port fails at once."""
    from shaderbay.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port or --host") from None
    sock.listen(2048)
    return sock
