"""The benchmark runs, prints the JSON others rely on, and measures what it says it measures."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import manualbp
from manualbp.bench import lenet, speed
from manualbp.layers.base import TORCH_TWINS
from manualbp.reference import to_torch


@pytest.mark.slow
def test_step_bench_json_has_the_relied_on_keys():
    result = subprocess.run(
        [sys.executable, "-m", "manualbp.bench", "--json", "--batch-sizes", "64", "--rounds", "5",
         "--compile-batch-sizes", "64", "--lenet-batch-sizes", "16", "--gpt-batch-sizes", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    row = report["steps"]["64"]
    assert {"manual_us", "native_us", "ratio", "manual_saved_bytes", "native_saved_bytes"} <= row.keys()
    assert row["manual_us"] > 0 and row["native_us"] > 0
    assert abs(row["ratio"] - row["manual_us"] / row["native_us"]) < 1e-9
    assert report["sgemm_gflops"] > 0
    assert row["per_layer_us"] > 0 and abs(row["per_layer_ratio"] - row["per_layer_us"] / row["native_us"]) < 1e-9
    assert row["manual_saved_bytes"] <= row["native_saved_bytes"]
    compiled = report["compiled"]["64"]
    assert compiled["manual_us"] > 0 and abs(compiled["ratio"] - compiled["manual_us"] / compiled["native_us"]) < 1e-9
    assert report["threads"] == 1 and len(report["load_average"]) == 2
    lenet = report["lenet"]["steps"]["16"]
    assert lenet["manual_us"] > 0 and lenet["native_us"] > 0
    assert abs(lenet["ratio"] - lenet["manual_us"] / lenet["native_us"]) < 1e-9
    assert 0 < lenet["manual_saved_bytes"] <= lenet["native_saved_bytes"]
    assert report["lenet"]["optimizer"] == "Adam" and report["lenet"]["rounds"] == 5
    gpt = report["gpt"]["steps"]["2"]
    assert gpt["manual_us"] > 0 and abs(gpt["ratio"] - gpt["manual_us"] / gpt["native_us"]) < 1e-9
    assert 0 < gpt["manual_saved_bytes"] and report["gpt"]["optimizer"] == "AdamW"


@pytest.mark.slow
def test_step_bench_prints_the_lenet_table():
    result = subprocess.run(
        [sys.executable, "-m", "manualbp.bench", "--batch-sizes", "16", "--rounds", "5", "--compile-batch-sizes",
         "--lenet-batch-sizes", "16", "24", "--gpt-batch-sizes", "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "One training step of conf/model/lenet.yaml" in result.stdout
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith(("| 16 ", "| 24 "))]
    lenet_rows = [row for row in rows if len(row) == 6]  # the MLP table has 8 columns
    assert [row[0].strip() for row in lenet_rows] == ["16", "24"]
    for row in lenet_rows:
        manual_us, native_us, ratio = (float(cell.replace(",", "")) for cell in row[1:4])
        assert manual_us > 0 and native_us > 0 and abs(ratio - manual_us / native_us) < 0.01
        assert int(row[4].replace(",", "")) <= int(row[5].replace(",", ""))


def test_lenet_step_bench_times_the_config_net_against_its_torch_twin():
    net, loss, make_optimizer = lenet.default_lenet_model()
    assert isinstance(net, manualbp.nn.LeNet) and isinstance(loss, manualbp.nn.SoftmaxCrossEntropyLoss)
    twin = to_torch(net)
    assert not any(type(module) in TORCH_TWINS for module in twin.modules())
    assert any(isinstance(module, torch.nn.Conv2d) for module in twin.modules())
    assert isinstance(make_optimizer(net.parameters()), torch.optim.Adam)


def test_manualbp_saves_no_more_for_backward_than_torch():
    torch.manual_seed(0)
    net, loss, _ = speed.default_mnist_model()
    inputs, targets = torch.randn(32, 784), torch.randint(0, 10, (32,))
    ours = speed.saved_activation_bytes(net, loss, inputs, targets)
    theirs = speed.saved_activation_bytes(to_torch(net), to_torch(loss), inputs, targets)
    # the input batch, the two hidden activations and the logits in float32, the int64 labels
    assert ours == 4 * 32 * (784 + 512 + 256 + 10) + 8 * 32
    assert ours <= theirs


def test_flop_count_is_forward_plus_both_backward_matmuls():
    net = manualbp.MLP([784, 512, 256, 10])
    per_sample = 2 * (784 * 512 + 512 * 256 + 256 * 10)  # forward
    per_sample += 2 * (784 * 512 + 512 * 256 + 256 * 10)  # δW of every layer
    per_sample += 2 * (512 * 256 + 256 * 10)  # δX of every layer but the first
    assert speed.flops_per_step(net, 3) == 3 * per_sample


def test_training_run_restarts_from_the_same_weights_and_takes_each_batch_once_per_round():
    """What makes the step bench fair: every round the same start and a new batch per step (a
    batch repeated is overfit within ~10 steps, and then timed through subnormal floats)."""
    seen = []

    class RecordingLoss(manualbp.nn.SoftmaxCrossEntropyLoss):
        def forward(self, logits, targets):
            seen.append(targets)
            return super().forward(logits, targets)

    torch.manual_seed(0)
    net = manualbp.nn.MLP([6, 5, 3])
    start = {name: value.clone() for name, value in net.state_dict().items()}
    batches = speed.random_batches(4, count=5, features=6, classes=3)
    run = speed.training_run(net, RecordingLoss(), lambda parameters: torch.optim.SGD(parameters, lr=0.5), batches)
    after_first = {name: value.clone() for name, value in net.state_dict().items()}
    assert any(not torch.equal(after_first[name], start[name]) for name in start)  # it trained
    seen.clear()
    assert run() > 0
    assert [id(targets) for targets in seen] == [id(targets) for _, targets in batches]  # each batch once, in turn
    for name, value in net.state_dict().items():
        assert torch.equal(value, after_first[name]), name  # the same start, the same steps, the same weights


def test_resnet18_bench_times_both_nets_and_every_layer_kind(capsys):
    """``--resnet18`` (issue 21.1), at a size that runs in seconds: both nets step, the saved bytes
    are read, and the per-layer table has a row per ResNet-18 layer kind."""
    from manualbp.bench import resnet18

    steps = resnet18.bench_resnet18_steps(configs=((torch.float64, 2, 32),), rounds=1, steps=1)
    row = steps["steps"]["float64 2x3x32x32"]
    assert row["manual_us"] > 0 and row["native_us"] > 0
    assert abs(row["ratio"] - row["manual_us"] / row["native_us"]) < 1e-9
    assert 0 < row["manual_saved_bytes"] <= row["native_saved_bytes"]
    layers = resnet18.bench_resnet18_layers(rounds=1)
    assert {"conv 3×3, 64→64", "batch_norm train", "relu", "max_pool2d 3/2", "adaptive_avg_pool2d 1"} <= set(
        layers["layers"])
    assert all(entry["manual_us"] > 0 and entry["native_us"] > 0 for entry in layers["layers"].values())
    resnet18.print_resnet18({"steps": steps, "layers": layers})
    assert "| float64 2x3x32x32 |" in capsys.readouterr().out


def test_the_floor_functions_compute_torchs_values_and_gradients():
    """The floor ``--floors`` times is the work done, not skipped: each floor Function gives torch's
    values and gradients (float64)."""
    from manualbp.bench.floor import BatchNormEvalFloor, MLPSoftmaxCrossEntropyFloor

    torch.manual_seed(0)
    input = torch.randn(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    weight, bias = (torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mean, variance = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    grad_output = torch.randn_like(input)
    ours = BatchNormEvalFloor.apply(input, mean, variance, weight, bias, 1e-5)
    theirs = torch.nn.functional.batch_norm(input, mean, variance, weight, bias, False, 0.1, 1e-5)
    torch.testing.assert_close(ours, theirs)
    for mine, torchs in zip(torch.autograd.grad(ours, (input, weight, bias), grad_output),
                            torch.autograd.grad(theirs, (input, weight, bias), grad_output), strict=True):
        torch.testing.assert_close(mine, torchs)

    sizes = [7, 5, 4, 3]
    parameters = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        parameters += [torch.randn(fan_out, fan_in, dtype=torch.float64, requires_grad=True),
                       torch.randn(fan_out, dtype=torch.float64, requires_grad=True)]
    inputs, targets = torch.randn(6, 7, dtype=torch.float64), torch.randint(0, 3, (6,))
    ours = MLPSoftmaxCrossEntropyFloor.apply(inputs, targets, *parameters)
    activation = inputs
    for layer in range(len(sizes) - 1):
        activation = torch.nn.functional.linear(activation, parameters[2 * layer], parameters[2 * layer + 1])
        activation = activation.relu() if layer < len(sizes) - 2 else activation
    theirs = torch.nn.functional.cross_entropy(activation, targets)
    torch.testing.assert_close(ours, theirs)
    for mine, torchs in zip(torch.autograd.grad(ours, parameters), torch.autograd.grad(theirs, parameters),
                            strict=True):
        torch.testing.assert_close(mine, torchs)


def test_floors_bench_times_manualbp_the_floor_and_torch(capsys):
    """``--floors`` at a size that runs in seconds: a row for batch norm in evaluation and one per
    MLP batch size, each timing all three sides."""
    from manualbp.bench import floor

    report = floor.bench_floors(batch_sizes=(8,), rounds=1)
    rows = [report["batch_norm_eval"], report["mlp_step"]["8"]]
    for row in rows:
        assert row["manual_us"] > 0 and row["floor_us"] > 0 and row["native_us"] > 0
        assert abs(row["floor_ratio"] - row["floor_us"] / row["native_us"]) < 1e-9
    floor.print_floors(report)
    assert "| MNIST MLP step, batch 8 |" in capsys.readouterr().out


def test_per_example_bench_times_every_method_or_says_why_not(capsys):
    """Every method of every model is timed, or named with the reason it could not run; manualbp's
    rows are always timed (they are what the bench is for)."""
    from manualbp.bench import per_example

    report = per_example.bench_per_example(batch_sizes=(4,), rounds=1, memory=False,
                                           models=["MNIST MLP 784-512-256-10", "transformer encoder (d 64)"])
    assert [row["model"] for row in report["rows"]] == ["MNIST MLP 784-512-256-10", "transformer encoder (d 64)"]
    methods = {"manualbp", "manualbp ghost clip", "floor", "Opacus hooks", "Opacus ghost clip", "torch.func vmap",
               "BackPACK"}
    for row in report["rows"]:
        assert row["ratios"]["plain"] == 1.0
        assert {"manualbp", "manualbp ghost clip", "floor"} <= row["ratios"].keys()
        assert all(ratio > 0 for ratio in row["ratios"].values())
        assert methods <= set(row["ratios"]) | set(row["refused"])
    assert "Sequential" in report["rows"][1]["refused"]["BackPACK"]
    per_example.print_per_example(report)
    assert "manualbp ghost clip" in capsys.readouterr().out

def test_conv_bench_times_manualbp_and_torch_at_every_shape(capsys, monkeypatch):
    """``--conv`` at a size that runs in seconds: one row per dtype and shape, each timing both sides,
    and the command line prints them."""
    from manualbp.bench import conv
    from manualbp.bench.__main__ import main

    shapes = conv.CONV_SHAPES[:1] + conv.CONV_SHAPES[-2:]
    report = conv.bench_conv(rounds=1, batch_size=1, shapes=shapes)
    assert len(report["rows"]) == 2 * len(shapes)
    for row in report["rows"].values():
        assert row["manual_us"] > 0 and row["torch_us"] > 0
        assert abs(row["ratio"] - row["manual_us"] / row["torch_us"]) < 1e-9
    conv.print_conv(report)
    assert "float64 pointwise 1x1/1 1x96x32x32 -> 24" in capsys.readouterr().out

    monkeypatch.setattr(conv, "CONV_SHAPES", shapes[-1:])  # the flag, on one small shape
    monkeypatch.setattr(conv, "CONV_BATCH", 1)
    main(["--conv", "--json"])
    assert '"rows"' in capsys.readouterr().out

def test_zoo_bench_times_each_model_against_the_original(capsys):
    """``python -m manualbp.bench --zoo --quick``: a row per model with finite ratios and saved bytes."""
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    from manualbp.bench.zoo import bench_zoo, print_zoo

    report = bench_zoo(rounds=2, quick=True, only=["vit", "llama sdpa"])
    assert set(report["rows"]) == {"vit_tiny", "llama sdpa"}, report["rows"].keys()
    for label, row in report["rows"].items():
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, (label, row)
        assert row["manual_saved_bytes"] > 0 and row["native_saved_bytes"] > 0, (label, row)
        assert all(extra > 0 for _, extra in row["extra"]), (label, row)
    print_zoo(report)
    printed = capsys.readouterr().out
    assert "vit_tiny" in printed and "llama sdpa" in printed and "median ratio" in printed, printed
