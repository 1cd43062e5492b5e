"""The GPT trained by hand-written backprop: its model, its text data (every way text comes in,
and every way it can be bad), a short real run of ``train()``, and sampling from its checkpoint."""

from __future__ import annotations

import functools
import http.server
import json
import math
import re
import subprocess
import sys
import threading

import pytest
import torch
from helpers import compose_config

import manualbp
from manualbp.errors import ConfigError
from manualbp.nn import GPT, CrossEntropyLoss
from manualbp.reference import to_torch
from manualbp.training import train
from manualbp.training.data.text import RandomStarts, TextDataModule, Windows, python_stdlib_text, read_text_file

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))  # ~11k chars
SMALL_NET = ["model.net.n_layer=1", "model.net.n_head=2", "model.net.n_embd=16", "model.net.block_size=16"]


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


def test_gpt_is_hand_written_throughout_and_equals_its_torch_twin_in_float64():
    torch.manual_seed(0)
    model = GPT(vocab_size=20, block_size=12, n_layer=2, n_head=2, n_embd=16).double()
    twin = to_torch(model)
    assert type(twin.blocks[0].attn) is torch.nn.MultiheadAttention and type(twin.lm_head) is torch.nn.Linear
    assert twin.lm_head.weight is twin.token_embedding.weight  # still tied
    idx, targets = torch.randint(0, 20, (3, 12)), torch.randint(0, 20, (3, 12))
    loss = CrossEntropyLoss()(model(idx).flatten(0, 1), targets.flatten())
    report = manualbp.backward_coverage(loss)
    assert report.complete, str(report)
    expected = torch.nn.functional.cross_entropy(twin(idx).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)
    for ours, theirs in zip(torch.autograd.grad(loss, list(model.parameters())),
                            torch.autograd.grad(expected, list(twin.parameters())), strict=True):
        assert (ours - theirs).norm() <= 1e-12 * theirs.norm()


def test_gpt_refuses_a_context_longer_than_its_block_and_generates_within_it():
    model = GPT(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)
    with pytest.raises(ValueError, match=r"T ≤ block_size = 4, got \(1, 5\)"):
        model(torch.zeros(1, 5, dtype=torch.long))
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), 10, top_k=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 11) and int(out.max()) < 5
    weights = model.attention_weights(torch.zeros(2, 4, dtype=torch.long))
    assert weights.shape == (2, 1, 4, 4) and torch.allclose(weights.sum(-1), torch.ones(2, 1, 4))
    assert weights[0, 0].triu(1).abs().max() == 0  # causal: nothing above the diagonal


# ----------------------------------------------------------------------------------------------
# Text in
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "the file is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not UTF-8 text"),
    (b"abc\x00def" * 100, "holds NUL characters"),
    (b"too short", "too short"),
])
def test_a_bad_text_file_is_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as error:
        read_text_file(path, minimum_chars=100)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_the_default_corpus_is_the_standard_library_source_and_says_so():
    text, description = python_stdlib_text(50_000)
    assert len(text) == 50_000 and "def " in text and "standard library" in description


def test_windows_are_inputs_and_the_next_characters():
    tokens = torch.arange(100)
    inputs, targets = Windows(tokens, 8)[torch.tensor([0, 10, 91])]
    assert inputs.shape == targets.shape == (3, 8) and torch.equal(targets, inputs + 1)
    assert len(Windows(tokens, 8)) == 92  # the last window's target ends at the last token


def test_the_batches_of_an_epoch_depend_on_the_seed_and_epoch_only():
    sampler = RandomStarts(1000, 4, 5, seed=3)
    sampler.set_epoch(2)
    first = list(sampler)
    again = RandomStarts(1000, 4, 5, seed=3)
    again.set_epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    again.set_epoch(3)
    assert not all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    fixed = RandomStarts(1000, 4, 5, seed=3, fixed=True)
    fixed.set_epoch(7)
    assert [b.tolist() for b in fixed] == [b.tolist() for b in RandomStarts(1000, 4, 5, seed=3, fixed=True)]


def test_the_vocabulary_split_and_round_trip(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    data = TextDataModule(path=str(path), block_size=16)
    assert data.vocabulary == "".join(sorted(set(TEXT)))
    assert data.net_settings() == {"vocab_size": len(data.vocabulary)}
    assert len(data.train_tokens) == int(len(TEXT) * 0.9)
    assert data.decode(data.val_tokens) == TEXT[len(data.train_tokens):]
    assert data.decode(data.encode("the fox")) == "the fox"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def served_text(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served/input.txt (a stand-in for the real URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "input.txt").write_text(TEXT)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/input.txt"
    server.shutdown()
    server.server_close()


def test_tinyshakespeare_is_downloaded_once_into_the_data_root(tmp_path, served_text):
    root = tmp_path / "data"
    data = TextDataModule(dataset="tinyshakespeare", root=str(root), url=served_text, block_size=16)
    assert (root / "tinyshakespeare" / "input.txt").read_text() == TEXT and data.characters == len(TEXT)
    # the next run reads the cached file: no server needed
    again = TextDataModule(dataset="tinyshakespeare", root=str(root), url="http://127.0.0.1:9/none", block_size=16)
    assert again.characters == len(TEXT)


def test_a_failed_download_says_what_to_do(tmp_path, served_text):
    with pytest.raises(ConfigError, match=r"could not download .*put the file at .*data.path=FILE") as error:
        TextDataModule(dataset="tinyshakespeare", root=str(tmp_path / "data"), url=served_text + ".missing",
                       block_size=16)
    assert "\n" not in str(error.value)
    assert not list((tmp_path / "data" / "tinyshakespeare").glob("*.part"))  # nothing half-written left
    with pytest.raises(ConfigError, match="data.download=false"):
        TextDataModule(dataset="tinyshakespeare", root=str(tmp_path / "other"), download=False)
    with pytest.raises(ConfigError, match="data.dataset='shakespeare' is not known"):
        TextDataModule(dataset="shakespeare")


# ----------------------------------------------------------------------------------------------
# A real run, and sampling from it
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT)
    run = folder / "run"
    results = train(compose_config([
        "model=gpt", f"data.path={corpus}", *SMALL_NET, "trainer.max_steps=40", "data.steps_per_epoch=20",
        "data.val_batches=2", "data.batch_size=8", "callbacks.gradient_audit.every_n_steps=20",
        "model.optimizer.lr=0.01",
    ], run))
    return results, run, corpus


def test_train_gpt_writes_results_checkpoints_and_figures(gpt_run):
    results, run, corpus = gpt_run
    assert json.loads((run / "results.json").read_text()) == results
    assert results["model"] == "gpt" and results["steps"] == 40 and results["val/acc"] is None
    assert 0 < results["train/loss"] < math.log(len(set(TEXT)))
    assert results["val/loss"] < 0.8 * math.log(len(set(TEXT)))  # from ln(vocabulary) at the start: it learns
    assert results["audit/max_rel_err"] < 1e-10  # every gradient equal to the torch.nn twin's, float64
    assert str(corpus) in results["data/corpus"] and results["data/vocabulary_size"] == len(set(TEXT))
    assert {"loss.png", "attention.png"} <= {path.rsplit("/", 1)[1] for path in results["figures"]}
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["manualbp"]["data"]["vocabulary"] == "".join(sorted(set(TEXT)))
    assert checkpoint["manualbp"]["net"]["vocab_size"] == len(set(TEXT))


def test_a_resumed_gpt_run_continues_to_its_step_count(gpt_run, tmp_path):
    _, run, corpus = gpt_run
    results = train(compose_config([
        "model=gpt", f"data.path={corpus}", *SMALL_NET, "trainer.max_steps=60", "data.steps_per_epoch=20",
        "data.val_batches=2", "data.batch_size=8", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
    ], tmp_path / "resumed"))
    assert results["steps"] == 60


@pytest.mark.parametrize("other_text, says", [
    (TEXT.upper(), "the same number of distinct characters"),
    (TEXT + "QXZ" * 20, "distinct characters, this text has"),
])
def test_resuming_or_testing_on_another_text_is_refused_naming_both(gpt_run, tmp_path, other_text, says):
    from manualbp.training.checkpoints import CheckpointError
    from manualbp.training.evaluate import evaluate

    _, run, corpus = gpt_run
    other = tmp_path / "other.txt"
    other.write_text(other_text)
    assert set(other_text) != set(TEXT)
    last = run / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError) as resumed:
        train(compose_config(["model=gpt", f"data.path={other}", *SMALL_NET, "trainer.max_steps=60",
                              "data.steps_per_epoch=20", "data.val_batches=2", "data.batch_size=8",
                              f"ckpt_path={last}"], tmp_path / "resumed"))
    with pytest.raises(CheckpointError) as tested:
        evaluate(compose_config(["model=gpt", "data=text", f"data.path={other}", *SMALL_NET, "data.val_batches=2",
                                 "data.batch_size=8", "model.scheduler.total_steps=60",
                                 f"ckpt_path={last}"], tmp_path / "eval", config_name="eval"))
    for error in (resumed.value, tested.value):
        message = str(error)
        assert "\n" not in message and str(corpus) in message and str(other) in message and says in message


def test_a_vocab_size_that_does_not_fit_the_data_is_refused(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    with pytest.raises(ConfigError, match=r"model.net.vocab_size=7 but the data needs \d+"):
        train(compose_config(["model=gpt", f"data.path={corpus}", "model.net.vocab_size=7"], tmp_path / "run"))


@pytest.mark.slow
def test_sample_prints_text_of_the_corpus_characters_without_lightning_or_hydra(gpt_run):
    _, run, _ = gpt_run
    checkpoint = run / "checkpoints" / "last.ckpt"
    code = ("import sys, runpy\n"
            f"sys.argv = ['manualbp.sample', {str(checkpoint)!r}, '--tokens', '120', '--prompt', 'line', "
            "'--seed', '3']\n"
            "try:\n    runpy.run_module('manualbp.sample', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert e.code in (0, None)\n"
            "heavy = {'lightning', 'pytorch_lightning', 'hydra', 'omegaconf'}\n"
            "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & heavy))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    text, heavy = result.stdout.rsplit("HEAVY", 1)
    assert heavy.strip() == "[]"
    generated = text[:-1]  # print's newline
    assert generated.startswith("line") and len(generated) == 4 + 120 and set(generated) <= set(TEXT)
    again = subprocess.run([sys.executable, "-m", "manualbp.sample", str(checkpoint), "--tokens", "120",
                            "--prompt", "line", "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert again.stdout == text  # the same seed, the same text


def test_sample_refuses_bad_prompts_and_checkpoints_in_one_line(gpt_run, tmp_path, capsys):
    from manualbp.sample import main

    _, run, _ = gpt_run
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    assert main([checkpoint, "--prompt", "Ω"]) == 1
    assert "characters the model never saw: 'Ω'" in capsys.readouterr().err
    assert main([str(tmp_path / "none.ckpt")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    damaged = tmp_path / "damaged.ckpt"
    data = bytearray((run / "checkpoints" / "last.ckpt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert main([str(damaged)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged.ckpt" in err


def test_the_torch_twin_trains_under_the_same_config_for_an_a_b_run(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    results = train(compose_config([
        "model=gpt", f"data.path={corpus}", *SMALL_NET, "trainer.max_steps=10", "data.steps_per_epoch=10",
        "data.val_batches=1", "model.net._target_=manualbp.reference.torch_gpt",
        "model.loss._target_=torch.nn.CrossEntropyLoss", "figures=false",
    ], tmp_path / "run"))
    assert results["loss"] == "CrossEntropyLoss" and results["steps"] == 10 and results["val/loss"] > 0


def test_the_run_logs_which_backward_nodes_its_loss_uses(tmp_path, caplog):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    with caplog.at_level("INFO", logger="manualbp.training.module"):
        train(compose_config([
            "model=gpt", f"data.path={corpus}", *SMALL_NET, "trainer.max_steps=2", "data.steps_per_epoch=2",
            "data.val_batches=1", "figures=false",
        ], tmp_path / "run"))
    lines = [record.getMessage() for record in caplog.records if "backward of the training loss" in record.getMessage()]
    assert len(lines) == 1
    written, total = re.search(r"(\d+) of (\d+) arithmetic backward nodes hand-written", lines[0]).groups()
    assert written == total and int(total) > 5


def test_sample_takes_a_tiny_temperature_any_seed_and_a_text_without_newlines(gpt_run, capsys):
    from manualbp.sample import load_language_model, main, sample

    _, run, _ = gpt_run
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    assert main([checkpoint, "--temperature", "1e-300", "--tokens", "20", "--prompt", "line"]) == 0
    greedy = capsys.readouterr().out
    assert main([checkpoint, "--temperature", "1e-300", "--tokens", "20", "--prompt", "line", "--seed", "9"]) == 0
    assert capsys.readouterr().out == greedy and len(greedy) == 4 + 20 + 1  # the most likely characters
    assert main([checkpoint, "--seed", str(2**70)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seed" in err and "out of range" in err
    net, vocabulary = load_language_model(checkpoint)
    without_newlines = vocabulary.replace("\n", "")
    text = sample(net, without_newlines, tokens=5, seed=1)
    assert text.startswith(without_newlines[0]) and len(text) == 6
