"""One place per layer: what convert, to_torch, the manual engine and MLP know of a layer comes
from its own declaration, so every declared layer -- including one added later -- is checked
here with no test to write for it. And the library imports nothing of the trainer."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys

import pytest
import torch

import manualbp
import manualbp.functional as mbf
from manualbp import manual
from manualbp import nn as mnn
from manualbp.layers.base import ACTIVATIONS, CONVERTIBLE, LOSSES, TORCH_TWINS, Loss
from manualbp.reference import to_torch

EXACT = {"rtol": 1e-13, "atol": 1e-15}
# Whole nets that compute their loss in one node (MLPClassifier) are not layers to put in a
# Sequential: tests/test_mlp_node.py checks them through convert/to_torch and the manual engine.
LAYERS = [layer for layer in TORCH_TWINS if not issubclass(layer, Loss) and not hasattr(layer, "fused_loss")]
ENGINE_LAYERS = [layer for layer in LAYERS if layer.runs_in_manual_engine]
LOSS_CLASSES = [layer for layer in TORCH_TWINS if issubclass(layer, Loss)]
FEATURES = 4


def _example(layer_class):
    """The layer's own example (``Layer.example``): an instance and inputs for it, in float64."""
    torch.manual_seed(0)
    return layer_class.example(torch.float64)


def _net_around(layer_class) -> tuple[torch.nn.Sequential, torch.Tensor]:
    """A small net with the example layer in the middle, and a batch for it: a Linear over the
    example input's last dimension before it (so that the layer's δ(input) feeds weights; none
    before a layer that takes integer inputs, such as indices), then Flatten and a Linear to 3
    outputs."""
    layer, (inputs,) = _example(layer_class)
    torch.manual_seed(0)
    front = [mnn.Linear(inputs.shape[-1], inputs.shape[-1]).double()] if inputs.is_floating_point() else []
    body = torch.nn.Sequential(*front, layer, mnn.Flatten())
    features = body(inputs).shape[1]
    return torch.nn.Sequential(*body, mnn.Linear(features, 3).double()), inputs


def _targets(rows: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(rows, 3, generator=generator, dtype=torch.float64), dim=1)  # every loss takes them


def _batch(seed=0):
    """Rows of FEATURES features and probability targets (every loss here takes them)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, FEATURES, generator=generator, dtype=torch.float64), _targets(6, seed)


def test_the_registry_holds_every_layer_of_the_package():
    assert {mnn.Linear, mnn.LinearReLU, mnn.Sigmoid, mnn.ReLU, mnn.ELU} <= set(LAYERS)
    assert set(LOSS_CLASSES) >= {mnn.SoftmaxCrossEntropyLoss, mnn.SoftmaxEuclideanLoss, mnn.EuclideanLoss}
    assert list(mnn.LOSSES) == ["softmax_cross_entropy", "softmax_euclidean", "euclidean"]
    assert mnn.LOSSES is LOSSES and {"relu", "sigmoid", "elu"} <= set(ACTIVATIONS)
    assert CONVERTIBLE[torch.nn.Linear] is mnn.Linear and torch.nn.CrossEntropyLoss not in CONVERTIBLE


@pytest.mark.parametrize("layer_class", LAYERS, ids=lambda layer: layer.__name__)
def test_to_torch_and_convert_are_inverse_and_share_parameters(layer_class):
    layer, inputs = _example(layer_class)
    twin = to_torch(torch.nn.Sequential(layer))[0]
    assert type(twin) is layer_class.torch_twin
    back = manualbp.convert(torch.nn.Sequential(twin))[0]
    assert type(back) is layer_class
    for ours, theirs in zip(layer.state_dict().values(), back.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)
    assert repr(back) == repr(layer)
    torch.manual_seed(1)  # dropout: the same draw for both
    ours = layer(*inputs)
    torch.manual_seed(1)
    torch.testing.assert_close(ours, twin(*inputs), **EXACT)  # MultiheadAttention: (output, weights) both


def test_only_layers_of_several_nodes_stay_out_of_the_manual_engine():
    assert {layer for layer in LAYERS if not layer.runs_in_manual_engine} == {mnn.MultiheadAttention}


@pytest.mark.parametrize("layer_class", ENGINE_LAYERS, ids=lambda layer: layer.__name__)
def test_the_manual_engine_runs_every_layer_like_autograd(layer_class):
    net, inputs = _net_around(layer_class)
    loss = mnn.SoftmaxCrossEntropyLoss()
    targets = _targets(inputs.shape[0])
    state = copy.deepcopy(net.state_dict())  # batch norm's running statistics, before either pass
    torch.manual_seed(1)  # dropout: the same mask for both passes
    loss_value, grads = manual.backprop(net, loss, inputs, targets)
    manual_state = copy.deepcopy(net.state_dict())
    net.load_state_dict(state)
    torch.manual_seed(1)
    expected = loss(net(inputs), targets)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(manual_state[name], value, **EXACT)  # running statistics updated alike
    expected_grads = torch.autograd.grad(expected, list(net.parameters()))
    assert torch.equal(loss_value, expected.detach())
    assert list(grads) == [name for name, _ in net.named_parameters()]
    for grad, expected_grad in zip(grads.values(), expected_grads, strict=True):
        assert torch.equal(grad, expected_grad)  # the same Function code: bit for bit


@pytest.mark.parametrize("loss_class", LOSS_CLASSES, ids=lambda loss: loss.__name__)
def test_every_loss_runs_in_the_manual_engine_and_matches_its_torch_twin(loss_class):
    torch.manual_seed(0)
    net = torch.nn.Sequential(mnn.Linear(FEATURES, 3)).double()
    loss = loss_class()
    inputs, targets = _batch()
    loss_value, grads = manual.backprop(net, loss, inputs, targets)
    expected = to_torch(loss)(net(inputs), targets)
    expected_grads = torch.autograd.grad(expected, list(net.parameters()))
    torch.testing.assert_close(loss_value, expected.detach(), **EXACT)
    for grad, expected_grad in zip(grads.values(), expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, **EXACT)


def _outputs_and_parameter_grads(module, inputs):
    """Under CPU bfloat16 autocast: ``module(*inputs)`` and the gradient of its sum for every parameter."""
    torch.manual_seed(1)  # dropout: the same draw for both
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = module(*inputs)
    if isinstance(output, tuple):  # MultiheadAttention: (output, weights)
        output = output[0]
    parameters = list(module.parameters())
    grads = torch.autograd.grad(output.float().sum(), parameters) if parameters else ()
    return output, dict(zip([name for name, _ in module.named_parameters()], grads, strict=True))


# Squared-error losses compute in float32 under autocast as F.mse_loss does; their twins, sums of
# elementwise ops (torch has no op for ½‖softmax(z) − y‖²), stay in the input's dtype.
SQUARED_ERROR_LOSSES = (mnn.EuclideanLoss, mnn.SoftmaxEuclideanLoss)
# bfloat16 keeps 8 bits: the two sides may round a sum differently by a few of its units.
BFLOAT16_CLOSE = {"rtol": 3e-2, "atol": 3e-2}


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["float32_input", "bfloat16_input"])
@pytest.mark.parametrize("layer_class", LAYERS + LOSS_CLASSES, ids=lambda layer: layer.__name__)
def test_every_layer_runs_under_autocast_like_its_torch_twin(layer_class, input_dtype):
    """Issue 24.6: each Module under torch.autocast gives its torch twin's output dtype and values,
    and gradients reach its (float32) parameters in float32; on float32 inputs, and on the
    bfloat16 ones an earlier layer hands on under autocast."""
    if issubclass(layer_class, Loss):
        layer = layer_class()
        inputs = tuple(tensor.float() for tensor in _batch())[:1] + (_targets(6).float(),)
        inputs = (inputs[0][:, :3].contiguous(), inputs[1])  # 3 classes, as the targets
    else:
        torch.manual_seed(0)
        layer, inputs = layer_class.example(torch.float32)
    twin = to_torch(torch.nn.Sequential(copy.deepcopy(layer)))[0]
    inputs = tuple(x.to(input_dtype).requires_grad_() if x.is_floating_point() else x for x in inputs)
    output, grads = _outputs_and_parameter_grads(layer, inputs)
    if layer_class in SQUARED_ERROR_LOSSES:  # torch's own op for it: F.mse_loss, float32 under autocast
        inputs = tuple(x.float() if x.is_floating_point() else x for x in inputs)
    expected, expected_grads = _outputs_and_parameter_grads(twin, inputs)
    assert output.dtype == expected.dtype, f"{layer_class.__name__}: {output.dtype}, torch's twin {expected.dtype}"
    torch.testing.assert_close(output, expected, **BFLOAT16_CLOSE)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, f"{name}: gradient in {grad.dtype}"
        torch.testing.assert_close(grad, expected_grads[name], **BFLOAT16_CLOSE, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_mlp_takes_every_declared_activation_by_name(name):
    net = mnn.MLP([FEATURES, 5, 2], activation=name, output_activation=name, fuse=False)
    assert [type(layer) for layer in net] == [mnn.Linear, ACTIVATIONS[name], mnn.Linear, ACTIVATIONS[name]]


def test_a_subclass_without_a_twin_of_its_own_is_left_alone():
    class Scaled(mnn.Linear):
        def forward(self, input):
            return 2 * super().forward(input)

    assert Scaled not in TORCH_TWINS
    net = torch.nn.Sequential(Scaled(FEATURES, 3))
    assert type(to_torch(net)[0]) is Scaled
    inputs, targets = _batch()
    with pytest.raises(manualbp.errors.ConfigError, match="manual engine runs manualbp layers only .* got Scaled"):
        manual.backprop(net, mnn.SoftmaxCrossEntropyLoss(), inputs.float(), targets.float())


def test_the_library_imports_no_trainer_dependency():
    # A fresh interpreter: this test process has imported Lightning and friends already.
    code = (
        "import sys\n"
        "import manualbp, manualbp.functional, manualbp.nn, manualbp.manual, manualbp.reference\n"
        "heavy = ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf', 'torchvision', 'matplotlib')\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & set(heavy)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_manual_engine_runs_a_small_conv_net_like_autograd():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        mnn.Conv2d(1, 3, 3, padding=1), mnn.BatchNorm2d(3), mnn.ReLU(), mnn.MaxPool2d(2),
        mnn.Conv2d(3, 4, 3, stride=2, bias=False), mnn.LeakyReLU(0.1), mnn.AvgPool2d(2, ceil_mode=True),
        mnn.Dropout(0.2), mnn.Flatten(), mnn.Linear(4, 3),
    ).double()
    loss = mnn.SoftmaxCrossEntropyLoss()
    inputs = torch.randn(5, 1, 10, 10, dtype=torch.float64)
    targets = torch.randint(0, 3, (5,))
    torch.manual_seed(1)
    loss_value, grads = manual.backprop(net, loss, inputs, targets)
    torch.manual_seed(1)
    expected = loss(net(inputs), targets)
    expected_grads = torch.autograd.grad(expected, list(net.parameters()))
    assert list(grads) == [name for name, _ in net.named_parameters()]
    torch.testing.assert_close(loss_value, expected.detach(), **EXACT)
    for grad, expected_grad in zip(grads.values(), expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, **EXACT)


def test_the_manual_engine_runs_lenet_like_autograd():
    # LeNet starts with Unflatten (N, 784) -> (N, 1, 28, 28): the engine runs it as a reshape whose
    # backward is the reshape back, and computes no δ for the data (its first conv needs none).
    torch.manual_seed(0)
    net, loss = mnn.LeNet(), mnn.SoftmaxCrossEntropyLoss()
    assert type(net[0]) is mnn.Unflatten and type(to_torch(net)[0]) is torch.nn.Unflatten
    inputs, targets = torch.randn(6, 784), torch.randint(0, 10, (6,))
    loss_value, grads = manual.backprop(net, loss, inputs, targets)
    expected = loss(net(inputs), targets)
    expected_grads = torch.autograd.grad(expected, list(net.parameters()))
    assert torch.equal(loss_value, expected.detach())
    assert list(grads) == [name for name, _ in net.named_parameters()]
    for grad, expected_grad in zip(grads.values(), expected_grads, strict=True):
        assert torch.equal(grad, expected_grad)  # the same Function code: bit for bit


# ----------------------------------------------------------------------------------------------
# @hand_writes: which torch callables a public function computes, with their arguments
# ----------------------------------------------------------------------------------------------

F = torch.nn.functional
CONV_NET_AND_ACTIVATION_CALLABLES = [
    F.conv1d, F.conv2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.batch_norm, F.group_norm, F.layer_norm,
    F.dropout, F.leaky_relu, F.relu, torch.relu, torch.Tensor.relu, F.sigmoid, torch.sigmoid, torch.Tensor.sigmoid,
    F.tanh, torch.tanh, torch.Tensor.tanh, F.elu, F.linear,
]


def test_hand_writes_names_the_torch_functions_manualbp_computes():
    from manualbp.layers.base import HAND_WRITTEN

    missing = [getattr(f, "__qualname__", repr(f)) for f in CONV_NET_AND_ACTIVATION_CALLABLES if f not in HAND_WRITTEN]
    assert not missing, f"no manualbp function is registered with @hand_writes for {missing}"


def _parameters(function):
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def test_each_hand_written_function_takes_its_torch_functions_arguments():
    """Same parameter names, order and defaults as each torch callable with a Python signature (the
    C builtins, torch.relu and the like, have none to read)."""
    from manualbp.layers.base import HAND_WRITTEN

    for torch_callable, ours in HAND_WRITTEN.items():
        try:
            theirs = _parameters(torch_callable)
        except (ValueError, TypeError):
            continue  # a builtin without a signature
        if any(name in ("args", "kwargs") for name, _ in theirs):
            continue  # F.max_pool2d: a dispatcher on return_indices, (*args, **kwargs)
        assert _parameters(ours) == theirs, f"{ours.__name__}: {_parameters(ours)} vs torch's {theirs}"


@pytest.mark.parametrize("call", [lambda x: mbf.elu(x, inplace=True), lambda x: mbf.leaky_relu(x, inplace=True),
                                  lambda x: mbf.dropout(x, inplace=True)], ids=["elu", "leaky_relu", "dropout"])
def test_torch_arguments_a_layer_does_not_hand_write_raise_not_implemented(call):
    """So that manualbp.hand_written() can run torch's own function for them instead."""
    x = torch.randn(3, 4)
    before = x.clone()
    with pytest.raises(NotImplementedError, match="inplace=True is not hand-written"):
        call(x)
    assert torch.equal(x, before)  # and the input is untouched
