"""Every manualbp Function behaves like PyTorch's own op at the edges: zero-size dimensions
(batch, features, classes) and NaN / ±inf in inputs and upstream gradients. Values and gradients
are compared with PyTorch's, NaN where PyTorch has NaN (``equal_nan``), shapes included.

One helper runs a function and its torch reference on the same inputs and upstream gradient; each
case below is one line of inputs.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

import manualbp.functional as mbf
from manualbp.layers.base import TORCH_TWINS, Loss
from manualbp.reference import TorchEuclideanLoss, TorchSoftmaxEuclideanLoss, to_torch

NAN, INF = float("nan"), float("inf")
DTYPE = torch.float64
# float64: a few units in the last place; float32: torch's defaults (an ulp of a different but
# equally right rounding order, e.g. ELU's Z + α against torch's αeˣ).
CLOSE = {torch.float64: {"rtol": 1e-12, "atol": 1e-14, "equal_nan": True}, torch.float32: {"equal_nan": True}}


def _run(function, inputs, grad_output):
    """Output and the gradient of every floating-point input (None where there is none)."""
    inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    output = function(*inputs)
    differentiable = [x for x in inputs if x.requires_grad]
    grads = torch.autograd.grad(output, differentiable, grad_output, allow_unused=True)
    return output.detach(), grads


def assert_like_torch(ours, theirs, inputs, grad_output=None):
    """``ours(*inputs)`` equals ``theirs(*inputs)`` in value, shape and every gradient, NaN for NaN."""
    if grad_output is None:
        grad_output = torch.ones_like(theirs(*inputs))
    output, grads = _run(ours, inputs, grad_output)
    expected_output, expected_grads = _run(theirs, inputs, grad_output)
    close = CLOSE[expected_output.dtype]
    torch.testing.assert_close(output, expected_output, **close)
    for index, (grad, expected) in enumerate(zip(grads, expected_grads, strict=True)):
        assert (grad is None) == (expected is None), f"gradient {index}: {grad} vs {expected}"
        if expected is not None:
            torch.testing.assert_close(grad, expected, **close, msg=lambda m, i=index: f"gradient {i}: {m}")


def _linear_relu_reference(input, weight, bias=None):
    return F.relu(F.linear(input, weight, bias))


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


# ----------------------------------------------------------------------------------------------
# Zero-size dimensions
# ----------------------------------------------------------------------------------------------

LINEAR_SHAPES = {  # input, weight, bias
    "zero_in_features": ((3, 4, 0), (5, 0), (5,)),
    "zero_in_features_2d": ((3, 0), (5, 0), (5,)),
    "zero_out_features": ((3, 4), (0, 4), (0,)),
    "zero_out_features_3d": ((2, 3, 4), (0, 4), (0,)),
    "zero_batch": ((0, 4), (5, 4), (5,)),
    "zero_batch_3d": ((2, 0, 4), (5, 4), (5,)),
    "all_zero": ((0, 0), (0, 0), (0,)),
    "vector_zero_in": ((0,), (5, 0), (5,)),
}


@pytest.mark.parametrize("shapes", LINEAR_SHAPES.values(), ids=LINEAR_SHAPES.keys())
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("ours, theirs", [(mbf.linear, F.linear), (mbf.linear_relu, _linear_relu_reference)],
                         ids=["linear", "linear_relu"])
def test_linear_layers_take_zero_size_dimensions_like_torch(ours, theirs, shapes, bias):
    inputs = [_randn(*shape, seed=seed) for seed, shape in enumerate(shapes)]
    assert_like_torch(ours, theirs, inputs if bias else inputs[:2])


ACTIVATIONS = {"relu": (mbf.relu, F.relu), "sigmoid": (mbf.sigmoid, torch.sigmoid),
               "elu": (mbf.elu, F.elu), "tanh": (mbf.tanh, torch.tanh), "gelu": (mbf.gelu, F.gelu),
               "gelu_tanh": (lambda x: mbf.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
               "silu": (mbf.silu, F.silu), "hardtanh": (mbf.hardtanh, F.hardtanh), "relu6": (mbf.relu6, F.relu6)}
ROWWISE = {"softmax": (mbf.softmax, F.softmax), "log_softmax": (mbf.log_softmax, F.log_softmax)}


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 3)], ids=str)
@pytest.mark.parametrize("name", ROWWISE)
def test_softmaxes_take_zero_size_tensors_like_torch(name, shape):
    ours, theirs = ROWWISE[name]
    for dim in range(len(shape)):
        assert_like_torch(lambda x, d=dim: ours(x, d), lambda x, d=dim: theirs(x, d), [_randn(*shape)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", ROWWISE)
def test_softmaxes_propagate_nan_and_inf_like_torch(name, dtype):
    # Each row: one special value among ordinary ones; each upstream gradient special at one place.
    ours, theirs = ROWWISE[name]
    rows = torch.tensor([[value, 1.0, -2.0] for value in SPECIAL], dtype=dtype)
    for grad in GRAD_SPECIAL:
        grad_output = torch.ones_like(rows)
        grad_output[:, 1] = grad
        assert_like_torch(lambda x: ours(x, 1), lambda x: theirs(x, 1), [rows], grad_output)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 3)], ids=str)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_take_zero_size_tensors_like_torch(name, shape):
    assert_like_torch(*ACTIVATIONS[name], [_randn(*shape)])


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (2, 0, 3)], ids=str)
def test_layer_norm_takes_zero_size_tensors_like_torch(shape):
    features = shape[-1:]
    inputs = [_randn(*shape), _randn(*features, seed=1), _randn(*features, seed=2)]
    assert_like_torch(lambda x, w, b: mbf.layer_norm(x, features, w, b),
                      lambda x, w, b: F.layer_norm(x, features, w, b), inputs)


@pytest.mark.parametrize("shape", [(0, 4), (0, 4, 3)], ids=str)
def test_group_norm_takes_zero_size_batches_like_torch(shape):
    inputs = [_randn(*shape), _randn(4, seed=1), _randn(4, seed=2)]
    assert_like_torch(lambda x, w, b: mbf.group_norm(x, 2, w, b), lambda x, w, b: F.group_norm(x, 2, w, b), inputs)


@pytest.mark.parametrize("shape", [(2, 4, 0), (0, 4, 0), (2, 4, 0, 3), (2, 0, 3)], ids=str)
def test_group_norm_refuses_zero_channels_or_values_like_torch(shape):
    groups = 2 if shape[1] else 1
    with pytest.raises(RuntimeError):
        F.group_norm(_randn(*shape), groups)
    with pytest.raises(RuntimeError, match="group_norm: expected at least one channel"):
        mbf.group_norm(_randn(*shape), groups)


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_group_norm_propagates_nan_and_inf_like_torch(value):
    # one special value spoils its own group (image 0, channels 0-1) and nothing else, as in torch
    inputs = [_with(_randn(2, 4, 3), (0, 1, 2), value), _randn(4, seed=1), _randn(4, seed=2)]
    assert_like_torch(lambda x, w, b: mbf.group_norm(x, 2, w, b), lambda x, w, b: F.group_norm(x, 2, w, b), inputs)


@pytest.mark.parametrize("settings", [{}, {"stride": 2, "padding": 1}, {"padding": "same"}], ids=str)
def test_conv1d_takes_a_zero_size_batch_like_torch(settings):
    inputs = [_randn(0, 2, 7), _randn(3, 2, 3, seed=1), _randn(3, seed=2)]
    assert_like_torch(lambda x, w, b: mbf.conv1d(x, w, b, **settings), lambda x, w, b: F.conv1d(x, w, b, **settings),
                      inputs)


@pytest.mark.parametrize("indices", [(0,), (2, 0), (0, 3)], ids=str)
def test_embedding_takes_zero_size_index_tensors_like_torch(indices):
    assert_like_torch(mbf.embedding, F.embedding, [torch.zeros(indices, dtype=torch.long), _randn(5, 3)])


ATTENTION_SHAPES = {  # query, key, value
    "zero_batch": ((0, 2, 3, 4), (0, 2, 5, 4), (0, 2, 5, 4)),
    "zero_queries": ((2, 0, 4), (2, 5, 4), (2, 5, 4)),
    "zero_value_features": ((2, 3, 4), (2, 5, 4), (2, 5, 0)),
}


@pytest.mark.parametrize("shapes", ATTENTION_SHAPES.values(), ids=ATTENTION_SHAPES.keys())
def test_attention_takes_zero_size_tensors_like_torch(shapes):
    inputs = [_randn(*shape, seed=seed) for seed, shape in enumerate(shapes)]
    assert_like_torch(mbf.scaled_dot_product_attention, F.scaled_dot_product_attention, inputs)


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_attention_rows_with_every_key_masked_give_zeros_like_torch(mask_kind, dtype):
    query, key, value = (_randn(2, 2, 3, 4, seed=seed).to(dtype) for seed in range(3))
    keep = torch.tensor([[True, False, True], [False, False, False], [True, True, False]])
    mask = keep if mask_kind == "bool" else torch.zeros(3, 3, dtype=dtype).masked_fill(~keep, -INF)
    output = mbf.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    assert output[:, :, 1].eq(0).all()  # the fully masked query row: 0, not NaN
    assert_like_torch(lambda q, k, v: mbf.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                      lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), [query, key, value])


# Every registered layer (not the losses, nor whole nets in one node), from its own example.
LAYERS = [layer for layer in TORCH_TWINS if not issubclass(layer, Loss) and not hasattr(layer, "fused_loss")]


def _zero_batch_run(module, inputs):
    """``module`` on ``inputs``: (output, input gradients, parameter gradients, buffers after), or
    the exception it raised."""
    inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    try:
        output = module(*inputs)
    except Exception as error:  # noqa: BLE001 -- compared with torch's own below
        return error
    if isinstance(output, tuple):  # MultiheadAttention: (output, weights)
        output = output[0]
    differentiable = [x for x in inputs if x.requires_grad] + list(module.parameters())
    grads = torch.autograd.grad(output, differentiable, torch.ones_like(output), allow_unused=True)
    return output.detach(), grads, [buffer.clone() for buffer in module.buffers()]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layer_class", LAYERS, ids=lambda layer: layer.__name__)
def test_every_layer_takes_a_zero_size_batch_like_torch(layer_class, training):
    """Issue 24.7: each layer's example with its batch cut to 0 gives its torch twin's output,
    gradients (input and parameters) and buffers, or the same error where torch raises one."""
    torch.manual_seed(0)
    layer, inputs = layer_class.example(DTYPE)
    layer.train(training)
    twin = to_torch(torch.nn.Sequential(copy.deepcopy(layer)))[0]
    inputs = [x[:0] for x in inputs]
    ours, theirs = _zero_batch_run(layer, inputs), _zero_batch_run(twin, inputs)
    if isinstance(theirs, Exception):
        assert type(ours) is type(theirs), f"torch raises {theirs!r}, manualbp gives {ours!r}"
        return
    assert not isinstance(ours, Exception), f"torch takes a zero-size batch, manualbp raises {ours!r}"
    (output, grads, buffers), (expected_output, expected_grads, expected_buffers) = ours, theirs
    assert output.shape == expected_output.shape and output.dtype == expected_output.dtype
    for index, (grad, expected) in enumerate(zip(grads, expected_grads, strict=True)):
        assert (grad is None) == (expected is None), f"gradient {index}: {grad} vs {expected}"
        if expected is not None:
            torch.testing.assert_close(grad, expected, equal_nan=True, msg=lambda m, i=index: f"gradient {i}: {m}")
    torch.testing.assert_close(buffers, expected_buffers, equal_nan=True)


CONV_SETTINGS = {"stride_1": {}, "stride_2_padding": {"stride": 2, "padding": 1}, "dilation": {"dilation": 2},
                 "groups": {"groups": 2}, "same": {"padding": "same"}}


@pytest.mark.parametrize("settings", CONV_SETTINGS.values(), ids=CONV_SETTINGS.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_conv2d_takes_a_zero_size_batch_on_every_path_like_torch(settings, dtype):
    """Issue 24.7: at N = 0 the backward crashed on every path (stride 1: "expected weight to be at
    least 1 at dimension 0", the others: an invalid gradient shape)."""
    inputs = [_randn(0, 4, 7, 7).to(dtype), _randn(6, 4 // settings.get("groups", 1), 3, 3, seed=1).to(dtype),
              _randn(6, seed=2).to(dtype)]
    assert_like_torch(lambda x, w, b: mbf.conv2d(x, w, b, **settings), lambda x, w, b: F.conv2d(x, w, b, **settings),
                      inputs)


def _probabilities(batch, classes):
    return torch.softmax(_randn(batch, classes, seed=1), dim=1) if classes else torch.zeros(batch, 0, dtype=DTYPE)


LOSS_SHAPES = [(0, 4), (3, 0), (0, 0)]  # (batch, classes)


@pytest.mark.parametrize("batch, classes", LOSS_SHAPES, ids=str)
@pytest.mark.parametrize("ours, theirs", [(mbf.softmax_cross_entropy, F.cross_entropy),
                                          (mbf.softmax_euclidean_loss, TorchSoftmaxEuclideanLoss())],
                         ids=["cross_entropy", "softmax_euclidean"])
def test_softmax_losses_take_zero_size_batches_and_classes_like_torch(ours, theirs, batch, classes):
    logits = _randn(batch, classes)
    assert_like_torch(ours, theirs, [logits, _probabilities(batch, classes)])
    if classes or not batch:  # class indices: a batch needs at least one class
        assert_like_torch(ours, theirs, [logits, torch.zeros(batch, dtype=torch.long)])


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0,)], ids=str)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_euclidean_loss_takes_zero_size_tensors_like_torch(shape, reduction):
    assert_like_torch(lambda p, t: mbf.euclidean_loss(p, t, reduction), TorchEuclideanLoss(reduction),
                      [_randn(*shape), _randn(*shape, seed=1)])


# ----------------------------------------------------------------------------------------------
# NaN and ±inf
# ----------------------------------------------------------------------------------------------

SPECIAL = [NAN, INF, -INF, 0.0, -0.0, 2.0, -2.0, 1e-300, -1e-300]
GRAD_SPECIAL = [NAN, INF, -INF, 0.0, 1.0, -3.0]


def _one_element_at_a_time(function):
    """``function`` applied to each element as a tensor of its own. PyTorch's CPU kernels have a
    vectorised path and a scalar one, which disagree for ELU's gradient at NaN in float64 (NaN
    against the scalar path's δZ); one element at a time always takes the scalar path, the
    semantics aten's code states (``x <= 0 ? δZ·αeˣ : δZ``)."""
    return lambda input: torch.cat([function(element) for element in input.reshape(-1, 1)]).reshape(input.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_propagate_nan_and_inf_like_torch(name, dtype):
    # Every (input, upstream gradient) pair of special values, elementwise.
    pairs = list(itertools.product(SPECIAL, GRAD_SPECIAL))
    inputs = torch.tensor([x for x, _ in pairs], dtype=dtype)
    grad_output = torch.tensor([g for _, g in pairs], dtype=dtype)
    ours, theirs = ACTIVATIONS[name]
    # ELU: torch's vectorised and scalar paths disagree (see above); GELU: they disagree for its
    # float32 value at +inf, where manualbp runs torch's own kernel on the whole tensor, as torch does.
    reference = _one_element_at_a_time(theirs) if name == "elu" else theirs
    assert_like_torch(ours, reference, [inputs], grad_output)


def _with(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


LINEAR_SPECIALS = {  # which argument (0 input, 1 weight, 2 bias, 3 upstream gradient), where
    "input": (0, (1, 2)),
    "weight": (1, (0, 1)),
    "bias": (2, (2,)),
    "grad_output": (3, (1, 0)),
}


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", LINEAR_SPECIALS.values(), ids=LINEAR_SPECIALS.keys())
@pytest.mark.parametrize("ours, theirs", [(mbf.linear, F.linear), (mbf.linear_relu, _linear_relu_reference)],
                         ids=["linear", "linear_relu"])
def test_linear_layers_propagate_nan_and_inf_like_torch(ours, theirs, where, value):
    arguments = [_randn(4, 3), _randn(5, 3, seed=1), _randn(5, seed=2), _randn(4, 5, seed=3)]
    argument, index = where
    arguments[argument] = _with(arguments[argument], index, value)
    *inputs, grad_output = arguments
    assert_like_torch(ours, theirs, inputs, grad_output)


def test_linear_relu_keeps_finite_gradients_finite_beside_one_nan_input():
    # The example: one NaN in X must spoil only δW's column of that feature, as in torch.
    inputs = [_with(_randn(4, 3), (1, 2), NAN), _randn(5, 3, seed=1), _randn(5, seed=2)]
    _, (grad_input, grad_weight, grad_bias) = _run(mbf.linear_relu, inputs, torch.ones(4, 5, dtype=DTYPE))
    assert torch.isfinite(grad_input).all() and torch.isfinite(grad_weight[:, :2]).all()
    assert_like_torch(mbf.linear_relu, _linear_relu_reference, inputs)


LOSS_SPECIALS = {"logits": (0, (1, 2)), "probabilities": (1, (2, 0))}


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", LOSS_SPECIALS.values(), ids=LOSS_SPECIALS.keys())
@pytest.mark.parametrize("targets", ["indices", "probabilities"])
@pytest.mark.parametrize("ours, theirs", [(mbf.softmax_cross_entropy, F.cross_entropy),
                                          (mbf.softmax_euclidean_loss, TorchSoftmaxEuclideanLoss())],
                         ids=["cross_entropy", "softmax_euclidean"])
def test_softmax_losses_propagate_nan_and_inf_like_torch(ours, theirs, targets, where, value):
    logits, probabilities = _randn(4, 3), torch.softmax(_randn(4, 3, seed=1), dim=1)
    target = probabilities if targets == "probabilities" else torch.tensor([0, 2, 1, 2])
    argument, index = where
    if argument == 1 and targets == "indices":
        pytest.skip("class indices hold no NaN")
    inputs = [logits, target]
    inputs[argument] = _with(inputs[argument], index, value)
    assert_like_torch(ours, theirs, inputs)


@pytest.mark.parametrize("grad_output", [NAN, INF, -INF, 0.0], ids=["nan", "inf", "-inf", "zero"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_euclidean_loss_propagates_nan_and_inf_like_torch(reduction, grad_output):
    pred, target = _with(_randn(4, 3), (0, 1), NAN), _with(_randn(4, 3, seed=1), (2, 2), INF)
    pred = _with(pred, (3, 0), -INF)
    assert_like_torch(lambda p, t: mbf.euclidean_loss(p, t, reduction), TorchEuclideanLoss(reduction),
                      [pred, target], torch.tensor(grad_output, dtype=DTYPE))


@pytest.mark.parametrize("targets", ["indices", "probabilities"])
@pytest.mark.parametrize("ours, theirs", [(mbf.softmax_cross_entropy, F.cross_entropy),
                                          (mbf.softmax_euclidean_loss, TorchSoftmaxEuclideanLoss())],
                         ids=["cross_entropy", "softmax_euclidean"])
def test_softmax_losses_pass_a_nan_upstream_gradient_on_like_torch(ours, theirs, targets):
    logits, probabilities = _randn(4, 3), torch.softmax(_randn(4, 3, seed=1), dim=1)
    target = probabilities if targets == "probabilities" else torch.tensor([0, 2, 1, 2])
    assert_like_torch(ours, theirs, [logits, target], torch.tensor(NAN, dtype=DTYPE))


@pytest.mark.parametrize("grad_output", [INF, -INF])
def test_cross_entropy_with_an_infinite_upstream_gradient_is_torchs(grad_output):
    """(yp − y)·s is computed as yp·s − s at the target, PyTorch's order: NaN there for s = ±inf."""
    assert_like_torch(mbf.softmax_cross_entropy, F.cross_entropy, [_randn(4, 3), torch.tensor([0, 2, 1, 2])],
                      torch.tensor(grad_output, dtype=DTYPE))
