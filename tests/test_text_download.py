"""The tiny Shakespeare download is checked before it is kept (no network: the fetch is faked)."""

from __future__ import annotations

import hashlib

import pytest

from manualbp.errors import ConfigError
from manualbp.training.data import text
from manualbp.training.data.text import TINY_SHAKESPEARE_URL, TextDataModule


@pytest.mark.parametrize("answer, says", [
    (b"\xff\xfe" + "First Citizen:\n".encode("utf-16-le") * 2000, "not tiny Shakespeare"),
    (b"<!DOCTYPE html><html><body>" + b"rate limited " * 3000 + b"</body></html>", "not tiny Shakespeare"),
])
def test_a_download_that_is_not_the_known_file_is_not_kept(tmp_path, monkeypatch, answer, says):
    monkeypatch.setattr(text, "fetch", lambda url, timeout_s: answer)
    for _ in range(2):  # the second run downloads again instead of reading what the first got
        with pytest.raises(ConfigError, match=says) as error:
            TextDataModule(dataset="tinyshakespeare", root=str(tmp_path))
        assert "\n" not in str(error.value)
    assert not list((tmp_path / "tinyshakespeare").glob("*.txt")) and not list(
        (tmp_path / "tinyshakespeare").glob(".*part"))


def test_another_url_must_send_utf8_text_not_a_web_page(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "fetch", lambda url, timeout_s: b"<html><body>" + b"x" * 20000)
    with pytest.raises(ConfigError, match="a web page"):
        TextDataModule(dataset="tinyshakespeare", root=str(tmp_path), url="https://example.org/a.txt")
    monkeypatch.setattr(text, "fetch", lambda url, timeout_s: b"\xff" * 20000)
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        TextDataModule(dataset="tinyshakespeare", root=str(tmp_path), url="https://example.org/a.txt")


def test_the_known_file_is_kept_and_a_damaged_cache_is_one_line(tmp_path, monkeypatch):
    known = b"x" * text.TINY_SHAKESPEARE_BYTES
    monkeypatch.setattr(text, "TINY_SHAKESPEARE_SHA256", hashlib.sha256(known).hexdigest())
    monkeypatch.setattr(text, "fetch", lambda url, timeout_s: known)
    assert TextDataModule(dataset="tinyshakespeare", root=str(tmp_path)).characters == len(known)
    (tmp_path / "tinyshakespeare" / "input.txt").write_bytes(b"\xff" * 20000)
    with pytest.raises(ConfigError, match="is not UTF-8 text; delete it"):
        TextDataModule(dataset="tinyshakespeare", root=str(tmp_path), url=TINY_SHAKESPEARE_URL)
