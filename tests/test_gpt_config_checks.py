"""Settings of a GPT run that cannot work are refused in one line before any training."""

from __future__ import annotations

import pytest
import torch
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


def test_a_folder_as_data_path_is_called_a_folder(tmp_path):
    from manualbp.training.data.text import TextDataModule

    with pytest.raises(ConfigError, match="is a folder; give a UTF-8 text file"):
        TextDataModule(path=str(tmp_path))


def test_a_relative_data_path_is_recorded_resolved(corpus, tmp_path, monkeypatch):
    from manualbp.training.data.text import TextDataModule

    monkeypatch.chdir(tmp_path)
    data = TextDataModule(path="corpus.txt", block_size=16)
    assert f"({corpus.resolve()})" in data.description


def test_loading_a_text_takes_a_few_bytes_a_character(tmp_path):
    import tracemalloc

    from manualbp.training.data.text import TextDataModule

    path = tmp_path / "big.txt"
    path.write_text(TEXT * 100)  # ~1.1 M characters
    tracemalloc.start()
    try:
        data = TextDataModule(path=str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak / data.characters < 7  # the file's bytes, its text, its UTF-32 codes, the tokens
    assert data.train_tokens.element_size() == 1  # up to 256 characters: one byte a token
    inputs, targets = data.train_dataloader().dataset[torch.tensor([0, 5])]
    assert inputs.dtype == targets.dtype == torch.long and data.decode(inputs[0]) == (TEXT * 100)[:64]


def test_a_relative_data_path_is_written_resolved_into_the_run_config(corpus, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.chdir(tmp_path)
    cfg = compose_config(["model=gpt", "data.path=corpus.txt", *SMALL_NET], tmp_path / "run")
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]),
                   tmp_path / "run" / ".hydra" / "config.yaml")  # what Hydra writes before train runs
    train(cfg)
    assert OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml").data.path == str(corpus.resolve())
