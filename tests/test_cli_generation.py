"""`shaderbay generate`, `shaderbay chat` and `shaderbay backends` as a user runs them: through a
subprocess, and the chat REPL through a pseudo-terminal (pexpect), on the tiny text model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pexpect
import pytest

CLI = [sys.executable, "-m", "shaderbay.cli"]
ENV = {**os.environ, "SHADERBAY_BACKEND": "numpy", "SHADERBAY_PROGRESS": "0"}


def shaderbay(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, env=ENV, timeout=120, check=False)


def test_version():
    import shaderbay as package

    done = shaderbay("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"shaderbay {package.__version__}"


def test_generate_json_and_a_prompt_from_stdin(text_model_dir):
    model = ["--model", str(text_model_dir), "--temperature", "0", "--max-tokens", "6", "--ignore-eos", "--seed", "1"]
    given = shaderbay("generate", "hello", *model, "--json")
    assert given.returncode == 0, given.stderr
    record = json.loads(given.stdout)
    assert record["finish_reason"] == "length" and len(record["token_ids"]) == record["completion_tokens"] == 6
    assert record["prompt_tokens"] > 1 and record["timings"]["prefill_s"] > 0 and record["seed"] == 1
    piped = shaderbay("generate", *model, "--json", stdin="hello")  # no prompt argument, stdin a pipe
    dashed = shaderbay("generate", "-", *model, stdin="hello")
    assert json.loads(piped.stdout) | {"timings": None} == record | {"timings": None}
    assert dashed.stdout == record["text"] + "\n"
    # the stats line counts the prompt once and says why the generation ended
    assert f"{record['prompt_tokens']} prompt tokens," in dashed.stderr and "finish: length" in dashed.stderr


def test_generate_chats_by_default_and_raw_completes(text_model_dir):
    model = ["--model", str(text_model_dir), "--temperature", "0", "--max-tokens", "4", "--json"]
    chat = json.loads(shaderbay("generate", "hello", *model).stdout)
    raw = json.loads(shaderbay("generate", "hello", *model, "--raw").stdout)
    assert chat["prompt_tokens"] > raw["prompt_tokens"]  # the template wrapped the message


def test_stop_strings_from_the_command_line(text_model_dir):
    model = ["--model", str(text_model_dir), "--temperature", "0", "--max-tokens", "16", "--ignore-eos", "--raw"]
    free = json.loads(shaderbay("generate", "hello", *model, "--json").stdout)["text"]
    stop = free[6:9]
    cut = json.loads(shaderbay("generate", "hello", *model, "--json", "--stop", stop, "--stop", "zzz").stdout)
    assert cut["text"] == free[: free.index(stop)] and cut["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "args, says",
    [
        (["--max-tokens", "0"], "max_tokens must be an integer >= 1"),
        (["--max-tokens", "-1"], "max_tokens must be an integer >= 1"),
        (["--temperature", "-1"], "temperature must be a finite number >= 0.0"),
        (["--temperature", "nan"], "temperature must be a finite number"),
        (["--top-p", "1.5"], "top_p must be a finite number in (0.0, 1.0]"),
        (["--max-context", "100000"], "max_context must be an integer in [1, 256]"),
        (["--raw", "--system", "be brief"], "--system needs a chat"),
    ],
)
def test_bad_options_get_a_typed_error_without_a_traceback(text_model_dir, args, says, monkeypatch, capsys):
    from shaderbay import cli

    monkeypatch.setenv("SHADERBAY_BACKEND", "numpy")
    assert cli.main(["generate", "hello", "--model", str(text_model_dir), *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_a_bad_option_from_a_shell_exits_2_with_one_line(text_model_dir):
    done = shaderbay("generate", "hello", "--model", str(text_model_dir), "--top-k", "-5")
    assert done.returncode == 2 and done.stderr.startswith("shaderbay: top_k must be an integer >= 0")
    assert "Traceback" not in done.stderr


def test_backends_names_its_choice():
    done = shaderbay("backends")
    assert done.returncode == 0
    assert done.stdout.splitlines()[-1] == "chosen: numpy (asked for by SHADERBAY_BACKEND)"


def spawn_chat(*args: str) -> pexpect.spawn:
    env = {**os.environ, "SHADERBAY_BACKEND": "numpy", "SHADERBAY_PROGRESS": "0"}
    repl = pexpect.spawn(CLI[0], [*CLI[1:], "chat", *args], env=env, encoding="utf-8", timeout=120)
    repl.expect_exact("/reset")  # the banner names the commands
    repl.expect_exact(">>> ")
    return repl


def test_the_chat_repl_through_a_terminal(text_model_dir):
    repl = spawn_chat("--model", str(text_model_dir), "--temperature", "0", "--max-tokens", "40", "--ignore-eos")
    try:
        repl.sendline("hello")
        repl.expect_exact(">>> ")  # a whole reply streamed, then the prompt again
        first = repl.before.split("hello", 1)[1].strip()
        assert first
        repl.sendline("/system be brief")
        repl.expect_exact("[new system message; the conversation is forgotten]")
        repl.expect_exact(">>> ")
        repl.sendline("/reset")
        repl.expect_exact("[the conversation is forgotten]")
        repl.expect_exact(">>> ")
        repl.sendline("/nonsense")
        repl.expect_exact("unknown command /nonsense")
        repl.expect_exact(">>> ")
        for _ in range(3):  # the history grows past the tiny model's 256 positions: said, and the session goes on
            repl.sendline("hello")
            repl.expect_exact(">>> ")
        assert "context holds 256" in repl.before
        repl.sendline("/reset")
        repl.expect_exact(">>> ")
        repl.sendline("/system")  # no system message again: the first answer once more
        repl.expect_exact(">>> ")
        repl.sendline("hello")
        repl.expect_exact(">>> ")
        assert repl.before.split("hello", 1)[1].strip() == first
        repl.sendeof()  # Ctrl-D ends it
        repl.expect(pexpect.EOF)
    finally:
        repl.close()
    assert repl.exitstatus == 0


def test_ctrl_c_stops_the_answer_and_keeps_the_session(default_cache):
    """On the default model (slow enough on NumPy that the answer is still running when Ctrl-C comes)."""
    repl = spawn_chat("--max-tokens", "200", "--ignore-eos", "--temperature", "0", "--max-context", "512")
    try:
        repl.sendline("Write a long story about a lighthouse.")
        repl.expect(r"lighthouse\.\r\n\S")  # the reply has begun streaming
        repl.sendintr()
        repl.expect_exact("[stopped]")
        repl.expect_exact(">>> ")
        repl.sendline("/exit")
        repl.expect(pexpect.EOF)
    finally:
        repl.close()
    assert repl.exitstatus == 0
