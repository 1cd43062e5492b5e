"""The Module layer: drop-in twins of torch.nn, ``convert``, compile, autocast, CUDA."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

import manualbp
import manualbp.functional as mbf
from manualbp import nn as mnn

EXACT = {"rtol": 1e-13, "atol": 1e-15}


def _parameter_grads(model):
    return {name: parameter.grad for name, parameter in model.named_parameters()}


def _loss_and_grads(model, x, target):
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    return loss.detach(), _parameter_grads(model)


# ----------------------------------------------------------------------------------------------
# Drop-in: parameters, init, state_dict, repr
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_linear_has_torch_names_shapes_and_default_init(bias):
    torch.manual_seed(0)
    ours = mnn.Linear(5, 3, bias=bias)
    torch.manual_seed(0)
    theirs = torch.nn.Linear(5, 3, bias=bias)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in theirs.named_parameters()
    ]
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor)  # same init, same RNG draws
    assert repr(ours) == repr(theirs) == f"Linear(in_features=5, out_features=3, bias={bias})"
    assert (ours.bias is None) == (not bias)


def test_linear_loads_a_torch_state_dict_and_then_computes_the_same():
    torch_layer = torch.nn.Linear(5, 3)
    ours = mnn.Linear(5, 3)
    result = ours.load_state_dict(torch_layer.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(7, 5)
    assert torch.equal(ours(x), torch_layer(x))
    torch_layer.load_state_dict(ours.state_dict())  # and back


def test_linear_accepts_device_and_dtype():
    layer = mnn.Linear(4, 2, device="cpu", dtype=torch.float64)
    assert layer.weight.dtype == layer.bias.dtype == torch.float64
    assert layer(torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64


def test_activation_and_loss_modules_match_torch():
    x = torch.randn(6, 4, dtype=torch.float64)
    torch.testing.assert_close(mnn.ReLU()(x), torch.nn.ReLU()(x), **EXACT)
    torch.testing.assert_close(mnn.Sigmoid()(x), torch.nn.Sigmoid()(x), **EXACT)
    torch.testing.assert_close(mnn.ELU(0.3)(x), torch.nn.ELU(0.3)(x), **EXACT)
    target = torch.tensor([0, 3, 1, 2, 2, 0])
    torch.testing.assert_close(
        mnn.SoftmaxCrossEntropyLoss()(x, target), torch.nn.CrossEntropyLoss()(x, target), **EXACT
    )
    y = torch.randn(6, 4, dtype=torch.float64)
    torch.testing.assert_close(mnn.EuclideanLoss()(x, y), 0.5 * ((x - y) ** 2).sum(), **EXACT)
    torch.testing.assert_close(
        mnn.EuclideanLoss("mean")(x, y), 0.5 * ((x - y) ** 2).sum() / 6, **EXACT
    )
    assert repr(mnn.ELU(0.3)) == "ELU(alpha=0.3)"
    assert repr(mnn.EuclideanLoss("mean")) == "EuclideanLoss(reduction='mean')"


def test_euclidean_loss_rejects_an_unknown_reduction():
    with pytest.raises(ValueError, match="reduction must be one of"):
        mnn.EuclideanLoss("avg")


@pytest.mark.parametrize("fuse", [True, False])
def test_mlp_is_the_slides_mnist_net_and_fusing_changes_no_number(fuse):
    torch.manual_seed(0)
    net = mnn.MLP([784, 512, 256, 10], fuse=fuse).double()
    kinds = [type(layer) for layer in net]
    if fuse:
        assert kinds == [mnn.LinearReLU, mnn.LinearReLU, mnn.Linear]
    else:
        assert kinds == [mnn.Linear, mnn.ReLU, mnn.Linear, mnn.ReLU, mnn.Linear]
    torch.manual_seed(0)
    reference = torch.nn.Sequential(
        torch.nn.Linear(784, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    ).double()
    reference_params = list(reference.parameters())
    for ours, theirs in zip(net.parameters(), reference_params, strict=True):
        assert torch.equal(ours, theirs)  # same init order and draws as the torch.nn net
    x, target = torch.randn(16, 784, dtype=torch.float64), torch.randint(0, 10, (16,))
    loss, grads = _loss_and_grads(net, x, target)
    expected_loss, expected_grads = _loss_and_grads(reference, x, target)
    torch.testing.assert_close(loss, expected_loss, **EXACT)
    for grad, expected in zip(grads.values(), expected_grads.values(), strict=True):
        torch.testing.assert_close(grad, expected, **EXACT)


def test_mlp_rejects_unknown_activation_and_bad_sizes():
    with pytest.raises(ValueError, match="unknown activation 'softsign'"):
        mnn.MLP([2, 3, 1], activation="softsign")
    with pytest.raises(ValueError, match="at least an input and an output"):
        mnn.MLP([2])


# ----------------------------------------------------------------------------------------------
# convert
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", [torch.nn.ReLU, torch.nn.Sigmoid, torch.nn.ELU])
def test_convert_torchvision_mlp_keeps_outputs_and_gradients(activation):
    torch.manual_seed(0)
    original = torchvision.ops.MLP(12, [32, 16, 5], activation_layer=activation).double()
    converted = manualbp.convert(copy.deepcopy(original))
    kinds = {type(m) for m in converted.modules()}
    assert torch.nn.Linear not in kinds and activation not in kinds
    assert mnn.Linear in kinds and mnn.Dropout in kinds and torch.nn.Dropout not in kinds  # (p = 0 here)
    x, target = torch.randn(9, 12, dtype=torch.float64), torch.randint(0, 5, (9,))
    loss, grads = _loss_and_grads(converted, x, target)
    expected_loss, expected_grads = _loss_and_grads(original, x, target)
    torch.testing.assert_close(loss, expected_loss, **EXACT)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], **EXACT)


def test_convert_works_in_place_on_a_torchvision_classifier_head_and_shares_parameters():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=7)  # random init: no download
    head_params = [id(p) for p in model.classifier.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    returned = manualbp.convert(model)
    assert returned is model
    assert isinstance(model.classifier[0], mnn.Linear) and isinstance(model.classifier[3], mnn.Linear)
    assert [id(p) for p in model.classifier.parameters()] == head_params
    assert type(model.features[0][2]) is mnn.Hardswish  # the activations too
    # The optimizer built before the conversion still trains the converted head.
    before = model.classifier[3].weight.detach().clone()
    model.eval()  # batch-norm statistics fixed; the head is what we look at
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([1, 4]))
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.classifier[3].weight)


def test_convert_keeps_device_dtype_and_training_mode_and_handles_a_bare_layer():
    layer = torch.nn.Linear(3, 2, dtype=torch.float64).eval()
    twin = manualbp.convert(layer)
    assert type(twin) is mnn.Linear and twin.weight is layer.weight and twin.bias is layer.bias
    assert twin.weight.dtype == torch.float64 and not twin.training
    no_bias = manualbp.convert(torch.nn.Linear(3, 2, bias=False))
    assert no_bias.bias is None
    assert type(manualbp.convert(torch.nn.ELU(0.5))) is mnn.ELU
    assert manualbp.convert(torch.nn.ELU(0.5)).alpha == 0.5


def test_convert_keeps_a_module_used_twice_one_module():
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 4, dtype=torch.float64)
    original = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
    converted = manualbp.convert(copy.deepcopy(original))  # deepcopy keeps the sharing too
    assert type(converted[0]) is mnn.Linear and converted[0] is converted[2]  # one twin in both places
    assert mnn.unconverted(converted) == []
    x, target = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 4, (5,))
    loss, grads = _loss_and_grads(converted, x, target)
    expected_loss, expected_grads = _loss_and_grads(original, x, target)
    torch.testing.assert_close(loss, expected_loss, **EXACT)
    assert grads.keys() == expected_grads.keys() == {"0.weight", "0.bias"}  # one weight, its gradient from both uses
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], **EXACT)


def test_unconverted_says_why_each_module_is_left():
    class ScaledLinear(torch.nn.Linear):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), ScaledLinear(3, 3), torch.nn.Softsign())
    assert mnn.unconverted(model) == [
        "0 (Linear: not converted yet: convert(model) replaces it)",  # a plain Linear is no subclass
        "1 (ScaledLinear: a subclass of Linear is not converted)",
        "2 (Softsign: no manualbp twin)",
    ]


# ----------------------------------------------------------------------------------------------
# torch.compile and autocast
# ----------------------------------------------------------------------------------------------


class SmallNet(torch.nn.Module):
    """Every manualbp module in one small net, so one compile covers them all."""

    def __init__(self):
        super().__init__()
        self.hidden = mnn.LinearReLU(6, 16)
        self.mix = mnn.Linear(16, 16)
        self.sigmoid, self.relu, self.elu = mnn.Sigmoid(), mnn.ReLU(), mnn.ELU()
        self.out = mnn.Linear(16, 4)
        self.cross_entropy, self.euclidean = mnn.SoftmaxCrossEntropyLoss(), mnn.EuclideanLoss()

    def forward(self, x, target):
        h = self.mix(self.hidden(x))
        h = self.sigmoid(h) + self.relu(h) + self.elu(h)
        logits = self.out(h)
        return self.cross_entropy(logits, target) + 0.1 * self.euclidean(h, torch.zeros_like(h))


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager_with_gradients():
    torch.manual_seed(0)
    net = SmallNet()
    x, target = torch.randn(8, 6), torch.randint(0, 4, (8,))
    eager_loss = net(x, target)
    eager_grads = torch.autograd.grad(eager_loss, list(net.parameters()))
    compiled = torch.compile(net, fullgraph=True)
    compiled_loss = compiled(x, target)
    compiled_grads = torch.autograd.grad(compiled_loss, list(net.parameters()))
    torch.testing.assert_close(compiled_loss, eager_loss)
    for grad, expected in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(grad, expected)


def test_autocast_runs_linear_in_bfloat16_and_losses_in_float32_like_torch():
    torch.manual_seed(0)
    ours = mnn.MLP([10, 32, 3])
    theirs = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    theirs[0].load_state_dict(ours[0].state_dict())
    theirs[2].load_state_dict(ours[1].state_dict())
    x, target = torch.randn(16, 10), torch.randint(0, 3, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, expected_logits = ours(x), theirs(x)
        loss = mbf.softmax_cross_entropy(logits, target)
        expected_loss = torch.nn.functional.cross_entropy(expected_logits, target)
        euclidean = mbf.euclidean_loss(logits, torch.zeros_like(logits))
    assert logits.dtype == expected_logits.dtype == torch.bfloat16
    assert loss.dtype == expected_loss.dtype == euclidean.dtype == torch.float32
    torch.testing.assert_close(logits, expected_logits)  # same bf16 matmul, same rounding
    torch.testing.assert_close(loss, expected_loss)
    loss.backward()
    expected_loss.backward()
    for ours_param, theirs_param in ((ours[0].weight, theirs[0].weight), (ours[1].bias, theirs[2].bias)):
        assert ours_param.grad.dtype == torch.float32  # gradients reach fp32 parameters in fp32
        torch.testing.assert_close(ours_param.grad, theirs_param.grad, rtol=2e-2, atol=2e-3)


def test_autocast_mlp_trains():
    torch.manual_seed(0)
    net = mnn.MLP([2, 16, 2])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    x = torch.randn(256, 2)
    target = (x[:, 0] * x[:, 1] > 0).long()  # XOR of the signs
    losses = []
    for _ in range(300):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = mbf.softmax_cross_entropy(net(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        accuracy = (net(x).argmax(1) == target).float().mean()
    assert accuracy > 0.9


def test_autocast_leaves_float64_alone_like_torch():
    x = torch.randn(4, 3, dtype=torch.float64)
    weight = torch.randn(2, 3, dtype=torch.float64)
    target = torch.randint(0, 2, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mbf.linear(x, weight).dtype == torch.nn.functional.linear(x, weight).dtype == torch.float64
        assert mbf.softmax_cross_entropy(x[:, :2], target).dtype == torch.float64
        assert mbf.euclidean_loss(x, x.flip(0)).dtype == torch.float64


def test_autocast_does_not_round_the_euclidean_target_to_bfloat16():
    torch.manual_seed(0)
    layer = mnn.Linear(8, 3)
    x, target = torch.randn(16, 8), torch.randn(16, 3) * 100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = layer(x)  # bfloat16
        loss = mbf.euclidean_loss(pred, target)
    assert pred.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.equal(loss, 0.5 * ((pred.float() - target) ** 2).sum())  # target used in float32


# ----------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_and_torch():
    torch.manual_seed(0)
    net = mnn.MLP([20, 32, 16, 4]).double()
    reference = copy.deepcopy(net)
    net.cuda()
    x, target = torch.randn(8, 20, dtype=torch.float64), torch.randint(0, 4, (8,))
    loss, grads = _loss_and_grads(net, x.cuda(), target.cuda())
    expected_loss, expected_grads = _loss_and_grads(reference, x, target)
    torch.testing.assert_close(loss.cpu(), expected_loss)
    for name in grads:
        assert grads[name].is_cuda
        torch.testing.assert_close(grads[name].cpu(), expected_grads[name])
    logits = torch.randn(6, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    labels = torch.randint(0, 5, (6,), device="cuda")
    assert torch.autograd.gradcheck(mbf.softmax_cross_entropy, (logits, labels))
    with pytest.raises(ValueError, match="must lie in"):
        mbf.softmax_cross_entropy(logits, labels + 5)
    with torch.autocast("cuda", dtype=torch.float16):
        assert net.float()(x.float().cuda()).dtype == torch.float16


def test_linear_output_can_be_modified_in_place_like_torchs():
    # A view returned from a custom Function may not be modified in place; ours returns none.
    for shape in [(3, 4), (2, 3, 4), (4,)]:
        x = torch.randn(*shape, requires_grad=True)
        layer = mnn.Linear(4, 2)
        torch.nn.ReLU(inplace=True)(layer(x)).sum().backward()
        assert x.grad is not None and layer.weight.grad is not None
