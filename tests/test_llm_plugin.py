"""shaderbay as a model of the `llm` tool: through llm's Python API and its command line.

llm loads every installed plugin, as a user's `llm` does: LLM_LOAD_PLUGINS (which would load only
those it names) is unset. The default model's package, whose own llm plugin needs llama-cpp-python,
is installed off sys.path (models/default.py), so it is not one of them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import shaderbay

os.environ.pop("LLM_LOAD_PLUGINS", None)  # read when llm is first imported, below
import llm  # noqa: E402


@pytest.fixture(scope="module")
def direct(text_model_dir):
    with shaderbay.load(text_model_dir, backend="numpy") as model:
        yield model


@pytest.fixture
def options(text_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path))
    return {"checkpoint": str(text_model_dir), "backend": "numpy", "max_tokens": 8, "temperature": 0}


def test_python_api(options, direct):
    model = llm.get_model("shaderbay")
    response = model.prompt("hello world", **options)
    first = [{"role": "user", "content": "hello world"}]
    assert response.text() == direct.chat(first, 8)
    assert response.usage().input == len(direct.encode_chat(first)) and response.usage().output == 8

    conversation = model.conversation()
    conversation.prompt("hello world", system="be brief", **options).text()
    second = conversation.prompt("more", **options).text()
    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": direct.chat([{"role": "system", "content": "be brief"}, *first], 8)},
        {"role": "user", "content": "more"},
    ]
    assert second == direct.chat(history, 8)


def test_sampling_options_reach_the_model(options):
    model = llm.get_model("shaderbay")
    sampled = dict(options, temperature=1.0, max_tokens=24)
    assert model.prompt("hello", seed=5, **sampled).text() == model.prompt("hello", seed=5, **sampled).text()
    assert model.prompt("hello", seed=5, **sampled).text() != model.prompt("hello", seed=6, **sampled).text()
    with pytest.raises(llm.ModelError, match="top_p"):
        model.prompt("hello", top_p=7.0, **options).text()


def _llm(*args: str, stdin: str | None = None, options: dict) -> str:
    flags = [f for name, value in options.items() for f in ("-o", name, str(value))]
    command = [sys.executable, "-m", "llm", *args, "-m", "shaderbay", *flags]
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_prompt_and_chat(options, direct):
    question = [{"role": "user", "content": "hello world"}]
    answer = direct.chat(question, 8)
    assert _llm("hello world", options=options) == answer + "\n"
    chat = _llm("chat", stdin="hello world\nquit\n", options=options)
    assert f"> {answer}\n" in chat


@pytest.mark.slow
def test_cli_default_model(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path))
    question = "Why is the sky blue?"
    with shaderbay.load(backend="numpy") as model:
        expected = model.chat([{"role": "user", "content": question}], 24)
    assert expected.strip()
    assert _llm(question, options={"backend": "numpy", "max_tokens": 24, "temperature": 0}) == expected + "\n"
