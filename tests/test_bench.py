"""The benchmark runs, prints the JSON others rely on, and measures what it says it measures."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

import manualbp
from manualbp.bench import speed
from manualbp.reference import to_torch


def test_step_bench_json_has_the_relied_on_keys():
    result = subprocess.run(
        [sys.executable, "-m", "manualbp.bench", "--json", "--batch-sizes", "64", "--rounds", "5",
         "--compile-batch-sizes", "64", "--threads", "1"],
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
