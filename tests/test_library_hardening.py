"""The drop-in promises at their edges: convert never changes results (in-place ReLU honoured),
no host sync per step for class targets on accelerators, meta tensors, and one clear error for
TorchScript with torch.export as the way to export. (Zero-size and NaN/inf: test_edge_values.py;
memory: test_memory.py.)"""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch

import manualbp
import manualbp.functional as mbf
import manualbp.manual
import manualbp.reference
from manualbp import nn as mnn

EXACT = {"rtol": 1e-13, "atol": 1e-15}


# ----------------------------------------------------------------------------------------------
# convert and ReLU(inplace=True)
# ----------------------------------------------------------------------------------------------


class Residual(torch.nn.Module):
    """``h = fc(x); y = act(h); return combine(y, h)``: whether act is in place decides the result."""

    def __init__(self, activation: torch.nn.Module, pattern: str):
        super().__init__()
        self.fc, self.act, self.out = torch.nn.Linear(4, 6), activation, torch.nn.Linear(6, 3)
        self.pattern = pattern

    def forward(self, x):
        h = self.fc(x)
        if self.pattern == "reuse_input":  # y + h: with an in-place act, h *is* y
            return self.out(self.act(h) + h)
        if self.pattern == "input_then_act":  # h + ... before the act: safe either way
            skip = h + 1
            return self.out(self.act(h) * skip)
        return self.out(self.act(h))  # plain chain


def _outputs_and_grads(model, x):
    output = model(x)
    return output.detach(), torch.autograd.grad(output.square().sum(), [x, *model.parameters()])


@pytest.mark.parametrize("pattern", ["reuse_input", "input_then_act", "chain"])
@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "out_of_place"])
def test_convert_keeps_outputs_and_gradients_of_residual_relu_patterns(inplace, pattern):
    torch.manual_seed(0)
    original = Residual(torch.nn.ReLU(inplace=inplace), pattern).double()
    converted = manualbp.convert(copy.deepcopy(original))
    assert type(converted.act) is mnn.ReLU and converted.act.inplace == inplace
    assert repr(converted.act) == repr(original.act)
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    output, grads = _outputs_and_grads(converted, x)
    expected_output, expected_grads = _outputs_and_grads(original, x)
    torch.testing.assert_close(output, expected_output, **EXACT)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, **EXACT)


def test_inplace_relu_overwrites_its_input_and_runs_the_hand_written_backward():
    h = torch.randn(5, 3, dtype=torch.float64, requires_grad=True) * 1  # a non-leaf, like a layer's output
    output = mbf.relu(h, inplace=True)
    assert output is h and (h >= 0).all()
    assert type(output.grad_fn).__name__.startswith("ReLUInplaceFunction")
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: mbf.relu(t * 1, inplace=True), (x,))
    assert torch.autograd.gradgradcheck(lambda t: mbf.relu(t * 1, inplace=True), (x,))


def test_inplace_relu_refuses_what_torchs_refuses():
    leaf = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        torch.relu_(leaf)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        mbf.relu(leaf, inplace=True)
    for tanh in (torch.tanh, mbf.tanh):  # tanh saves its output: overwriting it is an error in both
        output = tanh(torch.randn(3, requires_grad=True))
        mbf.relu(output, inplace=True)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            output.sum().backward()


def test_inplace_relu_under_torch_func_and_compile_matches_eager():
    x = torch.randn(4, 3, dtype=torch.float64)

    def relu_over_copy(t):
        h = t * 1
        return mbf.relu(h, inplace=True) + h  # h is relu(h) now: 2·relu(t)

    expected = 2 * torch.relu(x)
    torch.testing.assert_close(torch.func.vmap(relu_over_copy)(x), expected)
    step = (x > 0).to(x.dtype)
    torch.testing.assert_close(torch.func.grad(lambda t: relu_over_copy(t).sum())(x), 2 * step)
    torch.testing.assert_close(torch.func.jacrev(relu_over_copy)(x[0]), torch.diag(2 * step[0]))
    torch.testing.assert_close(torch.func.jacfwd(relu_over_copy)(x[0]), torch.diag(2 * step[0]))
    import torch.autograd.forward_ad as forward_ad

    with forward_ad.dual_level():  # eager forward-mode AD: the in-place Function's own jvp
        dual = forward_ad.make_dual(x.clone(), torch.ones_like(x))
        tangent = forward_ad.unpack_dual(mbf.relu(dual * 1, inplace=True)).tangent
    torch.testing.assert_close(tangent, step)


@pytest.mark.slow
def test_inplace_relu_compiles_fullgraph():
    x = torch.randn(4, 3, requires_grad=True)
    compiled = torch.compile(lambda t: (lambda h: mbf.relu(h, inplace=True) + h)(t * 1), fullgraph=True)
    compiled(x).sum().backward()
    torch.testing.assert_close(x.grad, 2.0 * (x > 0))


def test_to_torch_keeps_inplace_and_the_manual_engine_does_not_overwrite_saved_tensors():
    net = torch.nn.Sequential(mnn.Linear(4, 5), mnn.Tanh(), mnn.ReLU(inplace=True), mnn.Linear(5, 3)).double()
    assert manualbp.reference.to_torch(net)[2].inplace
    inputs, targets = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    loss = mnn.SoftmaxCrossEntropyLoss()
    _, grads = manualbp.manual.backprop(net, loss, inputs, targets)
    out_of_place = copy.deepcopy(net)
    out_of_place[2] = mnn.ReLU()
    expected = torch.autograd.grad(loss(out_of_place(inputs), targets), list(out_of_place.parameters()))
    for grad, expected_grad in zip(grads.values(), expected, strict=True):
        torch.testing.assert_close(grad, expected_grad, **EXACT)


def test_convert_refuses_an_inplace_elu_with_what_to_do():
    with pytest.raises(ValueError, match=r"no in-place form.*ELU\(alpha=0.5, inplace=False\)"):
        manualbp.convert(torch.nn.Sequential(torch.nn.ELU(0.5, inplace=True)))


# ----------------------------------------------------------------------------------------------
# No host sync per step for class targets on an accelerator
# ----------------------------------------------------------------------------------------------
# What a CPU-only run can prove: off the CPU, the range check reads no value (no .item(), the
# host sync) and issues one asynchronous device assertion whose condition is right. That the
# assertion then stops a CUDA run is PyTorch's; test_cuda_* below checks it where CUDA exists.


@pytest.fixture
def item_forbidden(monkeypatch):
    def item(self):
        raise AssertionError("Tensor.item() called: a host sync on an accelerator")

    monkeypatch.setattr(torch.Tensor, "item", item)


@pytest.fixture
def async_asserts(monkeypatch):
    conditions = []
    monkeypatch.setattr(torch, "_assert_async", lambda condition, message: conditions.append((condition, message)))
    return conditions


@pytest.mark.parametrize("loss", [mbf.softmax_cross_entropy, mbf.softmax_euclidean_loss])
def test_class_targets_off_the_cpu_are_checked_without_reading_a_value(loss, item_forbidden, async_asserts):
    logits = torch.empty(4, 10, device="meta", requires_grad=True)
    target = torch.empty(4, dtype=torch.long, device="meta")
    assert loss(logits, target).shape == ()
    assert len(async_asserts) == 1
    condition, message = async_asserts[0]
    assert condition.shape == () and condition.dtype == torch.bool
    assert "must lie in [0, 10)" in message


@pytest.mark.parametrize("labels, in_range", [([0, 9, 3], True), ([0, 10, 3], False), ([-1, 2, 3], False)])
def test_the_asynchronous_condition_holds_exactly_for_targets_in_range(labels, in_range):
    from manualbp.layers.losses import _classes_in_range

    assert bool(_classes_in_range(torch.tensor(labels), 10)) is in_range


def test_class_targets_on_the_cpu_are_still_checked_at_once_with_the_values():
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\).*from 0 to 12"):
        mbf.softmax_cross_entropy(torch.randn(3, 10), torch.tensor([0, 12, 3]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_class_targets_cause_no_sync_and_a_bad_one_still_fails():
    logits = torch.randn(4, 10, device="cuda", requires_grad=True)
    target = torch.tensor([0, 3, 9, 1], device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        mbf.softmax_cross_entropy(logits, target).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(RuntimeError, match="must lie in"):
        mbf.softmax_cross_entropy(logits, target + 1)
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------
# Meta tensors, TorchScript, torch.export
# ----------------------------------------------------------------------------------------------

from manualbp.layers.base import LOSSES, TORCH_TWINS, Loss  # noqa: E402

LAYERS = [layer for layer in TORCH_TWINS if not issubclass(layer, Loss) and not hasattr(layer, "fused_loss")]


@pytest.mark.parametrize("layer_class", LAYERS, ids=lambda layer: layer.__name__)
def test_every_layer_infers_shapes_on_meta_tensors_forward_and_backward(layer_class):
    torch.manual_seed(0)
    layer, inputs = layer_class.example(torch.float32)
    expected = _first(layer(*inputs))  # MultiheadAttention: (output, weights)
    with torch.device("meta"):
        layer, meta_inputs = layer_class.example(torch.float32)
    differentiable = [x for x in dict.fromkeys(meta_inputs) if x.is_floating_point()]  # not Embedding's indices
    for meta_input in differentiable:
        meta_input.requires_grad_()
    assert all(x.is_meta for x in meta_inputs) and all(parameter.is_meta for parameter in layer.parameters())
    output = _first(layer(*meta_inputs))
    assert output.is_meta and output.shape == expected.shape and output.dtype == expected.dtype
    output.sum().backward()
    for meta_input in differentiable:
        assert meta_input.grad.is_meta and meta_input.grad.shape == meta_input.shape
    for parameter in layer.parameters():
        assert parameter.grad.is_meta and parameter.grad.shape == parameter.shape


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_infers_shapes_on_meta_tensors(name):
    loss = LOSSES[name]()
    logits = torch.empty(6, 4, device="meta", requires_grad=True)
    target = torch.empty(6, 4, device="meta")
    value = loss(logits, target)
    assert value.is_meta and value.shape == ()
    value.backward()
    assert logits.grad.is_meta and logits.grad.shape == logits.shape


def test_a_model_built_under_the_meta_device_then_materialised_trains():
    with torch.device("meta"):
        net = mnn.MLP([4, 8, 3])
    assert net(torch.empty(5, 4, device="meta")).shape == (5, 3)
    net = net.to_empty(device="cpu")
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    mbf.softmax_cross_entropy(net(torch.randn(5, 4)), torch.tensor([0, 1, 2, 0, 1])).backward()
    assert all(parameter.grad is not None for parameter in net.parameters())


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")  # jit's deprecation
def test_torchscript_says_once_and_clearly_to_use_export_or_compile():
    model = torch.nn.Sequential(mnn.MLP([4, 8, 3]), torch.nn.Softmax(dim=1))
    with pytest.raises(RuntimeError, match="torch.jit.script of a model holding manualbp.LinearReLU: TorchScript "
                                           "cannot hold manualbp's layers .* torch.export.export.* torch.compile"):
        torch.jit.script(model)
    with pytest.raises(RuntimeError, match="torch.jit.trace through LinearReLUFunction: .* torch.export"):
        torch.jit.trace(model, (torch.randn(2, 4),))
    torch.jit.script(manualbp.reference.to_torch(model))  # the advertised alternative scripts


class EveryLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.mix = mnn.LinearReLU(6, 8), mnn.Linear(8, 8)
        self.sigmoid, self.relu, self.elu, self.tanh = mnn.Sigmoid(), mnn.ReLU(), mnn.ELU(), mnn.Tanh()
        self.relu_inplace, self.out = mnn.ReLU(inplace=True), mnn.Linear(8, 3)

    def forward(self, x):
        h = self.mix(self.hidden(x))
        h = self.sigmoid(h) + self.relu(h) + self.elu(h) + self.tanh(h)
        return self.out(self.relu_inplace(h) + h)


@pytest.mark.slow
def test_torch_export_of_a_manualbp_model_gives_eager_values():
    torch.manual_seed(0)
    model, x = EveryLayer(), torch.randn(5, 6)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))
    other = torch.randn(5, 6)
    torch.testing.assert_close(exported.module()(other), model(other))


# ----------------------------------------------------------------------------------------------
# Activations save what PyTorch saves: h = act(x); h += skip trains
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [lambda: torch.nn.ELU(), lambda: torch.nn.ELU(0.5), lambda: torch.nn.LeakyReLU(), lambda: torch.nn.LeakyReLU(-0.5),
     lambda: torch.nn.Hardtanh(), lambda: torch.nn.ReLU6()],
    ids=["elu", "elu_alpha", "leaky_relu", "leaky_relu_negative", "hardtanh", "relu6"],
)
def test_activation_output_added_to_in_place_trains_as_in_torch(make):
    torch.manual_seed(0)
    x = 3 * torch.randn(6, 5, dtype=torch.float64)
    skip = torch.randn(6, 5, dtype=torch.float64)
    grads = []
    for activation in (make(), manualbp.convert(make())):
        leaf = x.clone().requires_grad_()
        h = activation(leaf * 1)
        h += skip
        (h * skip).sum().backward()
        grads.append((h.detach(), leaf.grad))
    assert type(manualbp.convert(make())).__module__.startswith("manualbp")
    for got, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected, **EXACT)


# ----------------------------------------------------------------------------------------------
# hand_written() leaves what manualbp does not compute (integer, bool, complex) to PyTorch
# ----------------------------------------------------------------------------------------------

NOT_FLOATING_CALLS = {
    "matmul @": lambda t: t @ t,
    "torch.matmul": lambda t: torch.matmul(t, t),
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "max_pool2d": lambda t: torch.nn.functional.max_pool2d(t[None], 2),
    "dropout in eval": lambda t: torch.nn.functional.dropout(t, 0.5, training=False),
}


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.complex128, torch.bool], ids=str)
@pytest.mark.parametrize("name", list(NOT_FLOATING_CALLS))
def test_hand_written_runs_torchs_op_on_tensors_that_are_not_floating_point(name, dtype):
    call = NOT_FLOATING_CALLS[name]
    tensor = (torch.arange(16).reshape(4, 4) - 7).to(dtype) if not dtype.is_complex else torch.randn(4, 4, dtype=dtype)
    try:
        expected = call(tensor)
    except (RuntimeError, TypeError) as error:  # torch itself does not compute it: the same error under the mode
        with manualbp.hand_written(), pytest.raises(type(error)):
            call(tensor)
        return
    with manualbp.hand_written() as mode:
        got = call(tensor)
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    assert sum(mode.fell_back.values()) >= 1 and not mode.replaced


def test_hand_written_still_reports_its_own_type_errors_on_floating_point_tensors():
    with manualbp.hand_written(), pytest.raises(TypeError, match="negative_slope"):
        torch.nn.functional.leaky_relu(torch.randn(3), negative_slope="0.1")


# ----------------------------------------------------------------------------------------------
# Softmax(dim=None): converted, with PyTorch's implicit choice of dim
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5), (2, 3, 4, 5)], ids=lambda shape: f"rank{len(shape)}")
@pytest.mark.parametrize("torch_layer", [torch.nn.Softmax, torch.nn.LogSoftmax])
def test_convert_takes_softmax_without_dim_with_torchs_implicit_dim(torch_layer, shape):
    original = torch_layer()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "keep PyTorch's backward" warning
        converted = manualbp.convert(copy.deepcopy(original))
    assert type(converted).__module__.startswith("manualbp") and converted.dim is None
    assert manualbp.nn.unconverted(torch.nn.Sequential(converted)) == []
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(shape, dtype=torch.float64)
    results = []
    for layer in (original, converted):
        with pytest.warns(UserWarning, match="Implicit dimension choice"):
            output = layer(x)
        results.append((output, *torch.autograd.grad((output * weights).sum(), x)))
    assert type(results[1][0].grad_fn).__name__.startswith(("SoftmaxFunction", "LogSoftmaxFunction"))
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, **EXACT)
    from manualbp.reference import to_torch

    assert type(to_torch(converted)) is torch_layer


def test_unconverted_gives_the_twins_own_reason_for_refusing():
    class RefusingLinear(mnn.Linear):
        @classmethod
        def from_torch(cls, module):
            raise manualbp.errors.NotConvertibleError("Linear: refused here for a reason; do something")

    from manualbp.layers.base import CONVERTIBLE
    saved = CONVERTIBLE[torch.nn.Linear]
    CONVERTIBLE[torch.nn.Linear] = RefusingLinear
    try:
        assert manualbp.nn.unconverted(torch.nn.Sequential(torch.nn.Linear(2, 2))) == [
            "0 (Linear: refused here for a reason)"
        ]
    finally:
        CONVERTIBLE[torch.nn.Linear] = saved


# ----------------------------------------------------------------------------------------------
# Outputs are new tensors, never views: out += skip after any converted layer works as in torch
# ----------------------------------------------------------------------------------------------

FRESH_OUTPUT_CASES = {
    "group_norm_no_affine_3d": (lambda: torch.nn.GroupNorm(2, 4, affine=False), (2, 4, 3)),
    "group_norm_no_affine_4d": (lambda: torch.nn.GroupNorm(2, 4, affine=False), (2, 4, 3, 3)),
    "group_norm": (lambda: torch.nn.GroupNorm(2, 4), (2, 4, 3)),
    "layer_norm_no_affine": (lambda: torch.nn.LayerNorm(3, elementwise_affine=False), (2, 3)),
    "batch_norm_no_affine": (lambda: torch.nn.BatchNorm2d(4, affine=False), (2, 4, 3, 3)),
    "max_pool_unbatched": (lambda: torch.nn.MaxPool2d(2), (2, 4, 4)),
    "max_pool_1": (lambda: torch.nn.MaxPool2d(1), (1, 2, 4, 4)),
    "avg_pool_1": (lambda: torch.nn.AvgPool2d(1), (1, 2, 4, 4)),
    "adaptive_avg_pool_same_size": (lambda: torch.nn.AdaptiveAvgPool2d((4, 4)), (1, 2, 4, 4)),
    "adaptive_avg_pool_unbatched": (lambda: torch.nn.AdaptiveAvgPool2d(1), (2, 4, 4)),
    "linear_1d": (lambda: torch.nn.Linear(3, 2), (3,)),
    "linear_1d_no_bias": (lambda: torch.nn.Linear(3, 2, bias=False), (3,)),
}


@pytest.mark.parametrize("name", list(FRESH_OUTPUT_CASES))
def test_converted_layers_output_can_be_added_to_in_place(name):
    make, shape = FRESH_OUTPUT_CASES[name]
    torch.manual_seed(0)
    original = make().double()
    converted = manualbp.convert(copy.deepcopy(original))
    assert type(converted).__module__.startswith("manualbp")
    x = torch.randn(shape, dtype=torch.float64)
    results = []
    for layer in (original, converted):
        leaf = x.clone().requires_grad_()
        output = layer(leaf)
        output += 1
        results.append((output.detach(), *torch.autograd.grad(output.square().sum(), [leaf, *layer.parameters()])))
    for got, expected in zip(results[1], results[0], strict=True):  # normalization's δx sums to ~0: atol 1e-13
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)


def test_embedding_of_one_index_can_be_added_to_in_place():
    original = torch.nn.Embedding(5, 3).double()
    converted = manualbp.convert(copy.deepcopy(original))
    results = []
    for layer in (original, converted):
        output = layer(torch.tensor(2))
        output += 1
        results.append((output.detach(), *torch.autograd.grad(output.square().sum(), layer.weight)))
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, **EXACT)


# ----------------------------------------------------------------------------------------------
# convert and to_torch carry the replaced layers' hooks over
# ----------------------------------------------------------------------------------------------


def _hooked_model(calls):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    handles = [
        model[0].register_forward_pre_hook(lambda module, inputs: (inputs[0] * 2,)),
        model[0].register_forward_hook(lambda module, inputs, output: output * 10),
        model[1].register_forward_hook(lambda module, args, kwargs, output: calls.append("relu hook"),
                                       with_kwargs=True),
        model[2].register_full_backward_hook(lambda module, grad_input, grad_output: calls.append("backward")),
        model[2].register_full_backward_pre_hook(lambda module, grad_output: (grad_output[0] * 3,)),
        model[2]._register_state_dict_hook(lambda module, state, prefix, local: state.update({prefix + "seen": 1})),
    ]
    return model, handles


def _run(model, x):
    output = model(x)
    return (output.detach(), *torch.autograd.grad(output.square().sum(), [x, *model.parameters()]))


def test_convert_carries_hooks_over_and_to_torch_carries_them_back():
    from manualbp.reference import to_torch

    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    original_calls, converted_calls = [], []
    original, _ = _hooked_model(original_calls)
    converted, handles = _hooked_model(converted_calls)
    converted.load_state_dict(original.state_dict(), strict=False)
    converted = manualbp.convert(converted)
    assert type(converted[0]) is mnn.Linear and type(converted[2]) is mnn.Linear
    expected = _run(original, x)
    for got, want in zip(_run(converted, x), expected, strict=True):
        torch.testing.assert_close(got, want, **EXACT)
    assert converted_calls == original_calls == ["relu hook", "backward"]
    assert "2.seen" in converted.state_dict()
    back = to_torch(converted)
    assert type(back[0]) is torch.nn.Linear
    for got, want in zip(_run(back, x), expected, strict=True):
        torch.testing.assert_close(got, want, **EXACT)
    assert converted_calls == ["relu hook", "backward"] * 2 and "2.seen" in back.state_dict()
    for handle in handles:  # the handles returned before convert remove the hooks from the twins
        handle.remove()
    unhooked = torch.nn.Sequential(*(copy.deepcopy(layer) for layer in original))
    for layer in unhooked:
        for name in ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_state_dict_hooks"):
            getattr(layer, name).clear()
    torch.testing.assert_close(converted(x), unhooked(x), **EXACT)
    assert "2.seen" not in converted.state_dict()


# ----------------------------------------------------------------------------------------------
# Second derivatives that are identically zero: zeros, as PyTorch gives
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slope", [0.1, -0.5])
def test_second_derivative_of_leaky_relu_alone_is_zeros_as_in_torch(slope):
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    results = []
    for leaky_relu in (torch.nn.functional.leaky_relu, mbf.leaky_relu):
        (grad,) = torch.autograd.grad(leaky_relu(x, slope).sum(), x, create_graph=True)
        results.append((grad, *torch.autograd.grad((grad * grad).sum(), x)))
    assert type(results[1][0].grad_fn).__name__.startswith("LeakyReLUBackwardFunction")
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, **EXACT)
    assert (results[1][1] == 0).all()
    assert torch.autograd.gradgradcheck(lambda t: mbf.leaky_relu(t, slope), (x,))


# ----------------------------------------------------------------------------------------------
# Reparametrized layers (parametrize, old weight_norm / spectral_norm) keep torch's, named
# ----------------------------------------------------------------------------------------------


def _orthogonal_free(linear):
    class Symmetric(torch.nn.Module):
        def forward(self, weight):
            return weight.triu() + weight.triu(1).mT

    torch.nn.utils.parametrize.register_parametrization(linear, "weight", Symmetric())
    return linear


REPARAMETRIZED = {
    "parametrize": (_orthogonal_free, "parametrized weight"),
    "weight_norm": (torch.nn.utils.weight_norm, "weight from torch.nn.utils.weight_norm"),
    "spectral_norm": (torch.nn.utils.spectral_norm, "weight from torch.nn.utils.spectral_norm"),
}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name", list(REPARAMETRIZED))
def test_convert_names_reparametrized_layers_and_keeps_their_values(name):
    wrap, reason = REPARAMETRIZED[name]
    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(wrap(torch.nn.Linear(3, 3)), torch.nn.ReLU()).eval()

    with pytest.raises(manualbp.errors.NotConvertibleError, match=f"0 \\(.*Linear: {reason}"):
        manualbp.convert(make(), strict=True)
    model, x = make(), torch.randn(2, 3)
    expected = make()(x)
    with pytest.warns(UserWarning, match=reason):
        converted = manualbp.convert(model)
    assert type(converted[1]) is mnn.ReLU
    assert any(entry.startswith("0 (") and reason in entry for entry in manualbp.nn.unconverted(converted))
    torch.testing.assert_close(converted(x), expected)


@pytest.mark.parametrize("pool", [
    lambda x: torch.nn.functional.max_pool2d(x, 2), lambda x: torch.nn.functional.avg_pool2d(x, 2),
    lambda x: torch.nn.functional.max_pool2d(x, 3, 1, 1), lambda x: torch.nn.functional.avg_pool2d(x, 3, 2, 1),
], ids=["max", "avg", "max-padded", "avg-strided"])
def test_second_derivative_of_a_pool_alone_is_zeros_as_in_torch(pool):
    """A pool's backward reads no value of its input: grad of grad is 0, as PyTorch's (it raised, the
    input not being in the recorded graph)."""
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    results = []
    for hand_written in (False, True):
        with (manualbp.hand_written() if hand_written else contextlib.nullcontext()) as mode:
            output = pool(x)
        assert not hand_written or mode.replaced
        (grad,) = torch.autograd.grad(output.square().sum(), x, create_graph=True)
        results.append((grad, *torch.autograd.grad((grad * grad).sum(), x)))
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, **EXACT)
