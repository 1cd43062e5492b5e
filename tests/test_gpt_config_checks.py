"""Settings of a GPT run that cannot work are refused in one line before any training."""

from __future__ import annotations

import pytest
from helpers import compose_config

from manualbp.errors import ConfigError
from manualbp.training import train

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))
SMALL_NET = ["model.net.n_layer=1", "model.net.n_head=2", "model.net.n_embd=16", "model.net.block_size=16",
             "trainer.max_steps=2", "data.steps_per_epoch=2", "data.val_batches=1", "figures=false"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def refusal(tmp_path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as error:
        train(compose_config(list(overrides), tmp_path / "run"))
    message = str(error.value)
    assert "\n" not in message
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training
    return message


def test_windows_longer_than_the_net_context_are_refused(corpus, tmp_path):
    message = refusal(tmp_path, "model=gpt", f"data.path={corpus}", *SMALL_NET, "data.block_size=32")
    assert "data.block_size=32" in message and "model.net.block_size=16" in message


def test_the_manual_engine_on_the_gpt_is_refused(corpus, tmp_path):
    message = refusal(tmp_path, "model=gpt", "engine=manual", f"data.path={corpus}", *SMALL_NET)
    assert "engine=manual" in message and "GPT" in message and "engine=autograd" in message
