"""The one parse of yes/no environment flags and the one cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from shaderbay.config import cache_dir, env_flag


@pytest.mark.parametrize("value", ["", "0", "false", "No", " OFF "])
def test_no_words_read_no(monkeypatch, value):
    monkeypatch.setenv("SHADERBAY_TEST_FLAG", value)
    assert env_flag("SHADERBAY_TEST_FLAG", default=True) is False


@pytest.mark.parametrize("value", ["1", "yes", "on", "true", "anything"])
def test_other_words_read_yes(monkeypatch, value):
    monkeypatch.setenv("SHADERBAY_TEST_FLAG", value)
    assert env_flag("SHADERBAY_TEST_FLAG") is True


def test_an_unset_flag_reads_its_default(monkeypatch):
    monkeypatch.delenv("SHADERBAY_TEST_FLAG", raising=False)
    assert env_flag("SHADERBAY_TEST_FLAG") is False
    assert env_flag("SHADERBAY_TEST_FLAG", default=True) is True
    assert env_flag("SHADERBAY_TEST_FLAG", default=None) is None


def test_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("SHADERBAY_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("SHADERBAY_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "shaderbay"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "shaderbay"
