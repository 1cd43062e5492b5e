"""python -m manualbp.bench --per-example: per-example gradients and DP-SGD's clipping, side by side.

For each model and batch size, the time of one forward + backward (float32, the batch's mean
cross-entropy), as a ratio to a plain backward of the converted model, interleaved:

* manualbp: ``manualbp.per_example(model)`` (every p.grad_sample materialised);
* manualbp ghost clip: ``manualbp.clipped_gradients`` (per-example clipping, two passes, no
  per-example gradient materialised: the private step's gradient);
* floor: a plain backward plus writing a fresh N × P buffer (what materialising costs at least);
* Opacus hooks (``GradSampleModule``), Opacus ghost clipping (``GradSampleModuleFastGradientClipping``),
  ``torch.func.vmap(grad)``, BackPACK ``BatchGrad``: where they run; what they refuse is printed.

Also the extra memory of each (peak bytes above the plain backward's). Needs the bench extra
(``pip install -e ".[bench]"``: opacus, backpack-for-pytorch); a library that is missing is
reported as such.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torchvision

import manualbp
from manualbp.bench.memory import peak_bytes
from manualbp.bench.speed import interleaved_runs

PER_EXAMPLE_BATCH_SIZES = (64, 256)
STEPS_PER_ROUND = 2


class TinyEncoder(torch.nn.Module):
    """A small transformer classifier: token embedding, two encoder layers of width 64, a mean over
    the sequence, a linear head. Tokens (N, 32) -> logits (N, 10)."""

    def __init__(self, vocabulary: int = 100, width: int = 64, length: int = 32):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocabulary, width)
        layer = torch.nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(width, 10)
        self.length, self.vocabulary = length, vocabulary

    def forward(self, tokens):
        return self.head(self.encoder(self.embedding(tokens)).mean(1))


def _mlp():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def _lenet_group_norm():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.GroupNorm(2, 6), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.GroupNorm(4, 16), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
        torch.nn.Linear(84, 10))


def _group_norm_32(channels: int) -> torch.nn.GroupNorm:
    return torch.nn.GroupNorm(32, channels)


def _resnet18_group_norm():
    return torchvision.models.resnet18(num_classes=10, norm_layer=_group_norm_32)


# name -> (build, one batch of inputs of size N, the largest batch it runs at by default)
MODELS: dict[str, tuple[Callable, Callable[[int], torch.Tensor], int]] = {
    "MNIST MLP 784-512-256-10": (_mlp, lambda n: torch.randn(n, 1, 28, 28), 256),
    "LeNet with group norm": (_lenet_group_norm, lambda n: torch.randn(n, 1, 28, 28), 256),
    "transformer encoder (d 64)": (TinyEncoder, lambda n: torch.randint(0, 100, (n, 32)), 256),
    # N × P at batch 256 would be 11.4 GB in float32, twice over with the ratios' copies: 64 by default
    "ResNet-18 with group norm (32 px)": (_resnet18_group_norm, lambda n: torch.randn(n, 3, 32, 32), 64),
}


def _ratios(times: dict[str, float]) -> dict[str, float]:
    plain = times["plain"]
    return {name: value / plain for name, value in times.items()}


def _timed(step: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        for _ in range(STEPS_PER_ROUND):
            step()
        return (time.perf_counter() - start) / STEPS_PER_ROUND

    return run


def _methods(build, inputs, labels) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """The steps to time, by name, and the methods that refused the model, with their reason."""
    torch_model = build()
    converted = manualbp.convert(copy.deepcopy(torch_model))
    parameter_count = sum(p.numel() for p in torch_model.parameters())
    batch = inputs.shape[0]
    loss_function = torch.nn.functional.cross_entropy

    def plain():
        converted.zero_grad(set_to_none=True)
        loss_function(converted(inputs), labels).backward()

    def floor():
        plain()
        torch.empty(batch, parameter_count).fill_(1.0)  # a fresh N × P buffer, written once

    def per_example():
        converted.zero_grad(set_to_none=True)
        with manualbp.per_example(converted):
            loss_function(converted(inputs), labels).backward()

    def ghost_clip():
        converted.zero_grad(set_to_none=True)
        manualbp.clipped_gradients(converted, loss_function(converted(inputs), labels, reduction="none"), 1.0)

    steps = {"plain": plain, "manualbp": per_example, "manualbp ghost clip": ghost_clip, "floor": floor}
    refused: dict[str, str] = {}
    _add_opacus(steps, refused, torch_model, inputs, labels)
    _add_vmap(steps, refused, torch_model, inputs, labels)
    _add_backpack(steps, refused, torch_model, inputs, labels)
    return steps, refused


def _add_opacus(steps, refused, torch_model, inputs, labels) -> None:
    try:
        from opacus import GradSampleModule
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.validators import ModuleValidator
    except ImportError:
        refused["Opacus"] = "not installed (pip install -e '.[bench]')"
        return
    model = ModuleValidator.fix(copy.deepcopy(torch_model))  # its own attention in place of torch's
    ghost = GradSampleModuleFastGradientClipping(copy.deepcopy(model), max_grad_norm=1.0, use_ghost_clipping=True)
    hooks = GradSampleModule(model)

    def opacus_hooks():
        hooks.zero_grad(set_to_none=True)
        for parameter in hooks.parameters():
            parameter.grad_sample = None
        torch.nn.functional.cross_entropy(hooks(inputs), labels).backward()

    steps["Opacus hooks"] = opacus_hooks

    def opacus_ghost():  # DPTensorFastGradientClipping.backward's two passes, without an optimizer
        ghost.zero_grad(set_to_none=True)
        losses = torch.nn.functional.cross_entropy(ghost(inputs), labels, reduction="none")
        losses.mean().backward(retain_graph=True)
        coefficients = ghost.get_clipping_coef()
        ghost.zero_grad(set_to_none=True)
        ghost.disable_hooks()
        (coefficients * losses).sum().backward()
        ghost.enable_hooks()

    steps["Opacus ghost clip"] = opacus_ghost


def _add_vmap(steps, refused, torch_model, inputs, labels) -> None:
    from torch.func import functional_call, grad, vmap

    model = copy.deepcopy(torch_model)
    parameters = {name: p.detach() for name, p in model.named_parameters()}

    def loss_of_one(parameters, x, y):
        return torch.nn.functional.cross_entropy(functional_call(model, parameters, (x.unsqueeze(0),)), y.unsqueeze(0))

    per_example_grads = vmap(grad(loss_of_one), in_dims=(None, 0, 0))
    steps["torch.func vmap"] = lambda: per_example_grads(parameters, inputs, labels)


def _add_backpack(steps, refused, torch_model, inputs, labels) -> None:
    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad
    except ImportError:
        refused["BackPACK"] = "not installed (pip install -e '.[bench]')"
        return
    if not isinstance(torch_model, torch.nn.Sequential):
        refused["BackPACK"] = "refuses it: BackPACK's BatchGrad takes torch.nn.Sequential models only"
        return
    unsupported = sorted({type(m).__name__ for m in torch_model.modules()
                          if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.MultiheadAttention))})
    if unsupported:
        refused["BackPACK"] = f"refuses it: no BatchGrad for {', '.join(unsupported)}"
        return
    model = extend(copy.deepcopy(torch_model))
    loss = extend(torch.nn.CrossEntropyLoss())

    def backpack_step():
        model.zero_grad(set_to_none=True)
        with backpack(BatchGrad()):
            loss(model(inputs), labels).backward()

    steps["BackPACK"] = backpack_step


def bench_per_example(batch_sizes=PER_EXAMPLE_BATCH_SIZES, rounds: int = 5, models=None, memory: bool = True,
                      seed: int = 0) -> dict:
    """Per model and batch size: each method's time as a ratio to the plain backward (median of
    ``rounds`` interleaved rounds), its extra peak memory in bytes, and what refused the model."""
    report = {"rows": []}
    for name, (build, make_inputs, largest) in MODELS.items():
        if models is not None and name not in models:
            continue
        for batch_size in batch_sizes:
            if batch_size > largest and models is None:
                continue
            torch.manual_seed(seed)
            inputs, labels = make_inputs(batch_size), torch.randint(0, 10, (batch_size,))
            steps, refused = _methods(build, inputs, labels)
            for method, step in list(steps.items()):
                try:
                    step()  # warm up: first-call costs out of the measurement
                except Exception as error:  # what a library cannot run on this model, said in its own words
                    if method in ("plain", "manualbp", "manualbp ghost clip", "floor"):
                        raise
                    refused[method] = f"fails: {type(error).__name__}: {str(error).splitlines()[0][:140]}"
                    del steps[method]
            times = interleaved_runs({method: _timed(step) for method, step in steps.items()}, rounds)
            row = {"model": name, "batch_size": batch_size, "plain_ms": 1e3 * times["plain"],
                   "ratios": _ratios(times), "refused": refused}
            if memory:
                plain_peak = peak_bytes(steps["plain"])
                row["extra_bytes"] = {method: peak_bytes(step) - plain_peak for method, step in steps.items()}
            report["rows"].append(row)
    return report


def print_per_example(report: dict) -> None:
    print("per-example gradients, float32, one forward + backward: time / a plain backward of the converted "
          "model (extra peak memory)")
    for row in report["rows"]:
        print(f"\n{row['model']}, batch {row['batch_size']} (plain backward {row['plain_ms']:.1f} ms)")
        for method, ratio in row["ratios"].items():
            if method == "plain":
                continue
            extra = row.get("extra_bytes", {}).get(method)
            memory = "" if extra is None else f"  (+{extra / 2**20:,.0f} MiB)"
            print(f"  {method:22s} {ratio:6.2f}×{memory}")
        for method, why in row["refused"].items():
            print(f"  {method:22s} {why}")
