"""Every config composes, the overrides users rely on work, and bad ones fail fast and clearly."""

from __future__ import annotations

import pytest
import torch
from helpers import CONFIG_DIR, run_train_py
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from manualbp.errors import ConfigError
from manualbp.training import train
from manualbp.training.config import build, check_config
from manualbp.training.module import LitNet

MODELS = sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml"))
TRAINERS = sorted(path.stem for path in (CONFIG_DIR / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_model_and_trainer_config_composes_and_instantiates(config, model, trainer):
    cfg = config(f"model={model}", f"trainer={trainer}")
    if "vocab_size" in cfg.model.net and cfg.model.net.vocab_size is None:  # the data fills it in (model=gpt)
        cfg.model.net.vocab_size = 65
    module = build(cfg.model)  # the LightningModule with its net, loss, optimizer and scheduler
    assert isinstance(module, LitNet) and module.name == model
    assert isinstance(module.loss, torch.nn.Module)
    assert isinstance(module.optimizer_factory(module.net.parameters()), torch.optim.Optimizer)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    for name, callback in cfg.callbacks.items():
        assert isinstance(build(callback), Callback), name  # each entry builds a Lightning callback


@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_an_experiment_and_passes_the_engine_on(config, model):
    assert (CONFIG_DIR / "experiment" / f"{model}.yaml").is_file()
    cfg = config(f"model={model}", "engine=manual")
    if "vocab_size" in cfg.model.net and cfg.model.net.vocab_size is None:
        cfg.model.net.vocab_size = 65
    assert build(cfg.model).engine == "manual"


def test_each_model_selects_its_own_data(config):
    assert config("model=mnist").data._target_ == "manualbp.training.data.MNISTDataModule"
    assert config("model=xor").data._target_ == "manualbp.training.data.XORDataModule"
    assert config("model=approx").data._target_ == "manualbp.training.data.FunctionDataModule"
    assert config("model=mnist_linreg").data.one_hot is True
    assert config().model.name == "mnist"  # python train.py alone trains MNIST


def test_the_xor_config_is_the_slides_net(config):
    net = build(config("model=xor").model.net)
    assert [type(layer).__name__ for layer in net] == ["Linear", "Sigmoid", "Linear", "Sigmoid"]
    assert (net[0].in_features, net[2].out_features) == (2, 1)


def test_the_mnist_config_is_the_slides_net(config):
    net = build(config("model=mnist").model.net)
    assert [(layer.in_features, layer.out_features) for layer in net] == [(784, 512), (512, 256), (256, 10)]


def test_relied_on_overrides(config, tmp_path):
    cfg = config(
        "model=mnist", "seed=7", "trainer.max_epochs=3", f"data.root={tmp_path}",
        "data.dataset=FashionMNIST", "trainer=ddp", "trainer.devices=2",
    )
    assert cfg.seed == 7 and cfg.data.seed == 7
    assert cfg.trainer.max_epochs == 3
    assert cfg.data.root == str(tmp_path) and cfg.data.dataset == "FashionMNIST"
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2
    assert config("ckpt_path=/some/last.ckpt").ckpt_path == "/some/last.ckpt"
    assert config("model=mnist").trainer.max_epochs == 12  # the experiment's epochs ...
    assert config("model=mnist", "trainer.max_epochs=6").trainer.max_epochs == 6  # ... the command line wins
    approx = config("model=approx", "data.function=abs", "model.width=32")
    assert approx.data.function == "abs" and list(build(approx.model).net[0].weight.shape) == [32, 1]
    softmax_l2 = build(config("model=mnist", "model.loss=softmax_euclidean").model)
    assert type(softmax_l2.loss).__name__ == "SoftmaxEuclideanLoss"


def test_debug_config_is_a_one_batch_smoke_run(config):
    assert config("debug=fast").trainer.fast_dev_run is True


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.optimizer.lr=-0.1", "model.optimizer.lr must be a positive number, got -0.1"),
        ("model.optimizer.lr=0", "model.optimizer.lr must be a positive number"),
        ("trainer.max_epochs=0", "trainer.max_epochs must be at least 1"),
        ("ckpt_path=/no/such/last.ckpt", "ckpt_path=/no/such/last.ckpt is not a file"),
        ("seed=abc", "seed must be a whole number, got 'abc'; e.g. seed=3"),
        ("trainer.max_epochs=abc", "trainer.max_epochs must be a whole number, got 'abc'"),
        ("trainer.max_epochs=2.5", "trainer.max_epochs must be a whole number, got 2.5"),
        ("data.steps_per_epoch=many", "data.steps_per_epoch must be a whole number"),
    ],
)
def test_bad_values_fail_before_anything_is_loaded(config, override, message):
    with pytest.raises(ConfigError, match=message):
        check_config(config("model=xor", override))


def test_a_wrong_data_path_fails_fast(config, tmp_path):
    with pytest.raises(ConfigError, match=f"data.root={tmp_path}/nope is not an existing folder"):
        train(config("model=mnist", f"data.root={tmp_path}/nope"))


def test_an_unknown_dataset_fails_fast(config):
    with pytest.raises(ConfigError, match="data.dataset='CIFAR10' is not a torchvision dataset with MNIST's layout"):
        train(config("model=mnist", "data.dataset=CIFAR10"))


def test_a_net_that_does_not_fit_the_data_fails_fast(config, small_mnist):
    with pytest.raises(ConfigError, match="first layer takes 100 inputs but the data has 784"):
        train(config("model=mnist", f"data.root={small_mnist}", "model.net.sizes=[100,10]"))
    with pytest.raises(ConfigError, match="last layer has 2 outputs but the data needs 1; set the last"):
        train(config("model=xor", "model.net.sizes=[2,8,2]"))


@pytest.mark.slow
def test_the_command_line_reports_bad_overrides_without_a_stack_trace(tmp_path):
    result = run_train_py("model=xor", "model.optimizer.lr=-1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 1
    assert "error: model.optimizer.lr must be a positive number, got -1" in result.stderr
    assert "Traceback" not in result.stderr
    for override in ("seed=abc", "trainer.max_epochs=abc"):
        typed = run_train_py("model=xor", override, f"hydra.run.dir={tmp_path}/typed", cwd=tmp_path)
        assert typed.returncode == 1 and typed.stderr.strip().splitlines() == [
            f"error: {override.split('=')[0]} must be a whole number, got 'abc'; e.g. {override.split('=')[0]}=3"
        ], typed.stderr
    unknown = run_train_py("model=resnet", cwd=tmp_path)
    assert unknown.returncode != 0
    assert "Could not find 'model/resnet'" in unknown.stderr and "xor" in unknown.stderr


@pytest.mark.slow
def test_compose_is_what_hydra_main_sees(tmp_path):
    # hydra.main and compose share the same conf/ tree: a run folder records its config.
    result = run_train_py("model=xor", "debug=fast", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    assert recorded.model.name == "xor" and recorded.trainer.fast_dev_run is True
