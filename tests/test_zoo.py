"""Models people download, as their libraries write them: timm and transformers models built from
their configs (random init, small sizes, nothing downloaded) by ``manualbp.zoo``. For each, after
``manualbp.convert`` and under ``manualbp.hand_written()``: the loss and every gradient equal the
model as built in float64, and no arithmetic backward node is left to PyTorch."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("transformers")

from manualbp import zoo  # noqa: E402

FLOAT64 = 1e-8  # norm-relative, loss and every gradient
# Eager Llama/Qwen2 attention takes softmax(..., dtype=torch.float32) inside a float64 model: its
# weights are rounded to float32 on both sides, and a 1e-16 difference before the rounding can
# move a weight by one float32 ulp (6e-8 relative), so those models are held to float32 rounding.
FLOAT32_INSIDE = 1e-5

MODELS = {  # id: (spec, overrides, tolerance)
    "resnet": ("timm:resnet10t", ["image_size=32"], FLOAT64),
    "convnext": ("timm:convnext_atto", ["image_size=32", "depths=(1,1,1,1)"], FLOAT64),
    # 64 px, not 32: at 32 its last stages are 1 x 1 images, whose batch norm over a batch of two is so
    # ill-conditioned that both sides' float64 rounding differs by 1e-8 (worst 5e-13 at 64 px)
    "efficientnet": ("timm:efficientnet_b0", ["image_size=64"], FLOAT64),
    "mobilenetv3": ("timm:mobilenetv3_small_050", ["image_size=32"], FLOAT64),
    "vit": ("timm:vit_tiny_patch16_224", ["img_size=32", "depth=2"], FLOAT64),
    "swin": ("timm:swin_tiny_patch4_window7_224",
             ["img_size=32", "window_size=4", "depths=(1,1,1,1)", "embed_dim=24", "num_heads=(1,1,2,2)"], FLOAT64),
    "gpt2_sdpa": ("transformers:GPT2Config", [], FLOAT64),
    "gpt2_eager": ("transformers:GPT2Config", ["attn_implementation=eager"], FLOAT64),
    "bert_sdpa": ("transformers:BertConfig", [], FLOAT64),
    "bert_eager": ("transformers:BertConfig", ["attn_implementation=eager"], FLOAT64),
    "llama_sdpa": ("transformers:LlamaConfig", [], FLOAT64),
    "llama_eager": ("transformers:LlamaConfig", ["attn_implementation=eager"], FLOAT32_INSIDE),
    "qwen2_sdpa": ("transformers:Qwen2Config", [], FLOAT64),
    "qwen2_eager": ("transformers:Qwen2Config", ["attn_implementation=eager"], FLOAT32_INSIDE),
    "t5": ("transformers:T5Config", [], FLOAT64),
}
SLOW = {"efficientnet", "mobilenetv3", "convnext", "t5"}  # 20-50 s each in float64 on a loaded 2-core machine


def _models():
    return [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else []) for name in MODELS]


@functools.cache
def _checked(name: str) -> zoo.GradientCheck:
    spec, overrides, _ = MODELS[name]
    return zoo.gradient_check(zoo.build(spec, overrides))


@pytest.mark.parametrize("name", _models())
def test_loss_and_every_gradient_equal_the_model_as_built(name):
    check = _checked(name)
    tolerance = MODELS[name][2]
    assert check.loss_error <= tolerance and check.worst_error <= tolerance, check
    assert check.coverage.hand_written, check.coverage  # manualbp's backward ran: not the original twice


@pytest.mark.parametrize("name", _models())
def test_no_arithmetic_node_is_left_to_pytorch(name):
    report = _checked(name).coverage
    assert report.complete, f"{MODELS[name][0]}: {report}"


def test_the_check_catches_a_wrong_gradient(monkeypatch):
    """A backward formula that is off makes the check fail (the check compares, it does not pass by default)."""
    import manualbp.layers.normalization as normalization

    original = normalization.layer_norm_backward

    def off_by_a_little(*args, **kwargs):
        grad_input, grad_weight, grad_bias = original(*args, **kwargs)
        return grad_input, (None if grad_weight is None else grad_weight * 1.001), grad_bias

    monkeypatch.setattr(normalization, "layer_norm_backward", off_by_a_little)
    check = zoo.gradient_check(zoo.build(*MODELS["vit"][:2]))
    assert check.worst_error > 1e-4 and "norm" in check.worst, check


def test_build_refuses_an_unknown_spec_in_one_line():
    with pytest.raises(ValueError, match="expected timm:MODEL or transformers:CONFIG"):
        zoo.build("keras:resnet")
    with pytest.raises(ValueError, match="no config class 'NoSuchConfig'"):
        zoo.build("transformers:NoSuchConfig")
    with pytest.raises(ValueError, match="key=value"):
        zoo.parse_overrides(["hidden_size"])


def test_importing_manualbp_does_not_import_the_zoo_libraries():
    code = "import sys, manualbp, manualbp.zoo; print(sorted({'timm', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_the_coverage_command_builds_a_transformers_model_and_checks_its_gradients():
    result = subprocess.run(
        [sys.executable, "-m", "manualbp.coverage", "transformers:LlamaConfig", "hidden_size=32",
         "num_hidden_layers=1"],
        capture_output=True, text=True, timeout=600,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "transformers:LlamaConfig hidden_size=32 num_hidden_layers=1:", result.stdout + result.stderr
    assert "AttentionFunction" in result.stdout, result.stdout
    check = lines[-1]
    assert check.startswith("float64 gradient check against the model as built: loss "), result.stdout
    worst = float(check.split("≤ ")[1].split(" ")[0])
    assert worst <= FLOAT64 and result.returncode in (0, 1), result.stdout + result.stderr


def test_zoo_models_run_in_float32_too():
    built = zoo.build("transformers:LlamaConfig", ["hidden_size=32", "num_hidden_layers=1"], dtype=torch.float32)
    assert built.loss().dtype == torch.float32 and built.loss().isfinite()
