"""`shaderbay convert MODEL.gguf OUT_DIR`: a Llama-family GGUF to a checkpoint directory."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gguf", help="the GGUF file (F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors)")
    parser.add_argument("out_dir", help="the directory to write (config.json, model.safetensors, tokenizer files)")
    parser.add_argument(
        "--dtype",
        default="float16",
        choices=("float16", "float32", "bfloat16", "f16", "f32", "bf16"),
        help="weight precision of model.safetensors (%(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from shaderbay.progress import Progress

    from .gguf import convert_gguf

    t0 = time.perf_counter()
    with Progress(f"converting {args.gguf}") as bar:
        out = convert_gguf(args.gguf, args.out_dir, dtype=args.dtype, progress=bar)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
