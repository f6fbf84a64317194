"""SmolLM2-135M-Instruct against the reference implementation's outputs (../shared/golden).

The default model's GGUF is converted to float32 once per session and run on the NumPy
backend: for every golden case the prompt's token ids, the top-5 next-token ids and logits
(within 1e-3), the per-position top-1 ids and the greedy continuation must match. The
float16 conversion must reproduce the first case's continuation too.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import shaderbay
from fixtures_model import golden_data, required_smollm2_gguf

CASES = list(range(5))


@pytest.fixture(scope="session")
def golden() -> dict:
    g = golden_data()
    assert len(g["cases"]) == len(CASES)
    return g


@pytest.fixture(scope="session")
def f32_dir(tmp_path_factory):
    from shaderbay.models.gguf import convert_gguf

    return convert_gguf(required_smollm2_gguf(), tmp_path_factory.mktemp("smollm2-f32"), dtype="float32")


@pytest.fixture(scope="session")
def model_f32(f32_dir, numpy_backend):
    model = shaderbay.load(f32_dir, backend=numpy_backend, max_context=512, cache_dtype="f32")
    yield model
    model.close()


def _prompt_ids(model, case) -> list[int]:
    prompt = case["prompt"]
    if isinstance(prompt, str):
        return model.encode(prompt)
    return model.encode_chat(prompt["messages"])


@pytest.mark.parametrize("i", CASES)
def test_prompt_ids(model_f32, golden, i):
    case = golden["cases"][i]
    prompt = case["prompt"]
    if not isinstance(prompt, str):
        assert model_f32.tokenizer.apply_chat_template(prompt["messages"]) == case["text"]
    assert _prompt_ids(model_f32, case) == case["input_ids"]


@pytest.mark.parametrize("i", CASES)
def test_logits(model_f32, golden, i):
    case = golden["cases"][i]
    logits = model_f32.logits(case["input_ids"], all_positions=True)
    last = logits[-1]
    top5 = np.argsort(-last, kind="stable")[:5].tolist()
    assert top5 == case["last_top5_ids"]
    np.testing.assert_allclose(last[top5], case["last_top5_logits"], atol=1e-3, rtol=0)
    assert logits.argmax(-1).tolist() == case["per_position_top1_ids"]
    np.testing.assert_allclose(logits.max(-1), case["per_position_top1_logits"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("i", CASES)
def test_greedy_continuation(model_f32, golden, i):
    case = golden["cases"][i]
    assert list(model_f32.tokens(case["input_ids"], 32)) == case["greedy_32_ids"]
    assert model_f32.decode(case["greedy_32_ids"]) == case["greedy_32_text"]
    eos = golden["eos_token_id"]
    if len(case["greedy_32_ids"]) < 32:  # stopped early, at EOS, as we do
        assert case["greedy_32_ids"][-1] in (eos if isinstance(eos, list) else [eos])
        assert case["greedy_32_ids"][-1] in model_f32.eos_token_ids


def test_chat_text(model_f32, golden):
    """model.chat() renders the template, generates greedily and returns the text without the EOS token."""
    case = golden["cases"][2]
    assert model_f32.decode(case["greedy_32_ids"]) == case["greedy_32_text"]
    eos_text = model_f32.tokenizer.id_to_token(case["greedy_32_ids"][-1])
    assert model_f32.chat(case["prompt"]["messages"], 32) == case["greedy_32_text"].removesuffix(eos_text)


def test_float16_conversion_matches_the_first_case(default_cache, golden, numpy_backend):
    from shaderbay.models.default import default_model_dir

    case = golden["cases"][0]
    with shaderbay.load(default_model_dir("float16"), backend=numpy_backend) as model:
        assert model.llama.weights.embed.dtype == "f16"
        assert list(model.tokens(case["input_ids"], 32)) == case["greedy_32_ids"]


def test_generate_with_only_a_prompt(default_cache, capsys):
    """`shaderbay generate "Hello"`: the default model on the best backend (here a few tokens only)."""
    from shaderbay import cli

    assert cli.main(["generate", "Hello", "--max-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "tokens/s" in err


@pytest.mark.slow
def test_generate_command_from_a_shell(default_cache):
    env = {**os.environ, "SHADERBAY_CACHE": default_cache}
    done = subprocess.run(
        [sys.executable, "-m", "shaderbay.cli", "generate", "Hello"], capture_output=True, text=True, env=env,
        timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "tokens/s" in done.stderr


@pytest.mark.slow
def test_golden_on_every_backend(model_backend, f32_dir, golden):
    """Every backend reproduces the reference's per-position top-1 ids and every greedy continuation."""
    with shaderbay.load(f32_dir, backend=model_backend, max_context=512, cache_dtype="f32") as model:
        for case in golden["cases"]:
            logits = model.logits(case["input_ids"], all_positions=True)
            assert logits.argmax(-1).tolist() == case["per_position_top1_ids"]
            np.testing.assert_allclose(logits[-1][case["last_top5_ids"]], case["last_top5_logits"], atol=1e-2)
            assert list(model.tokens(case["input_ids"], 32)) == case["greedy_32_ids"]
