"""Per-example gradients (``manualbp.per_example``): each layer's per-example formula against
``torch.func.vmap(grad(...))`` of its torch twin in float64, whole models, the ghost norms against the
norms of the materialised terms, DP-SGD's clipping, and the refusals (batch norm, PyTorch's own
backward on a parameter)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

import manualbp
from manualbp.errors import PerExampleError
from manualbp.layers.base import TORCH_TWINS, Loss
from manualbp.layers.linear import LinearFunction
from manualbp.reference import to_torch

# torch.func's reference runs PyTorch's attention kernel one example at a time
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def vmap_per_example(model: torch.nn.Module, loss_of_one, *batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each example's gradient by torch.func: vmap over the batch of grad of ``loss_of_one(output, *rest)``
    for one example (a batch of one), keyed like ``model.named_parameters()``."""
    parameters = {name: p.detach() for name, p in model.named_parameters()}

    def one_example(parameters, first, *rest):
        output = functional_call(model, parameters, (first.unsqueeze(0),))
        return loss_of_one(output, *(r.unsqueeze(0) for r in rest))

    return vmap(grad(one_example), in_dims=(None, *[0] * len(batch)))(parameters, *batch)


def assert_matches(model: torch.nn.Module, expected: dict[str, torch.Tensor], attribute: str = "grad_sample"):
    for name, parameter in model.named_parameters():
        got = getattr(parameter, attribute)
        want = expected[name] if attribute == "grad_sample" else expected[name].flatten(1).norm(dim=1)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"{attribute} of {name}")


def _layers_with_parameters():
    for kind in TORCH_TWINS:
        if issubclass(kind, Loss) or kind.__name__ == "MLPClassifier":  # MLPClassifier: its own test below
            continue
        layer, inputs = kind.example(torch.float64)
        if any(p.requires_grad for p in layer.parameters()):
            yield pytest.param(kind, id=kind.__name__)


@pytest.mark.parametrize("kind", list(_layers_with_parameters()))
def test_every_layer_with_parameters_matches_vmap(kind):
    layer, inputs = kind.example(torch.float64)
    if kind.__name__.startswith("BatchNorm"):
        layer.train()
        with pytest.raises(PerExampleError, match="group norm"), manualbp.per_example(layer):
            layer(*inputs).sum().backward()
        return
    output = layer(*inputs)
    output = output[0] if isinstance(output, tuple) else output
    weights = torch.randn_like(output)  # loss = Σ weights·output: every output element gets its own δ

    def loss_of_one(output, weights):
        output = output[0] if isinstance(output, tuple) else output
        return (output * weights).sum()

    twin = to_torch(layer)
    expected = vmap_per_example(twin, loss_of_one, inputs[0], weights) if len(inputs) == 1 else None
    if expected is None:  # attention: query, key, value
        parameters = {name: p.detach() for name, p in twin.named_parameters()}

        def one(parameters, w, *xs):
            out = functional_call(twin, parameters, tuple(x.unsqueeze(0) for x in xs))
            return loss_of_one(out, w.unsqueeze(0))

        expected = vmap(grad(one), in_dims=(None, 0, *[0] * len(inputs)))(parameters, weights, *inputs)
    with manualbp.per_example(layer):
        output = layer(*inputs)
        loss_of_one(output, weights).backward()
    assert_matches(layer, expected)
    for parameter in layer.parameters():
        torch.testing.assert_close(parameter.grad_sample.sum(0), parameter.grad, rtol=1e-12, atol=1e-12)


def lenet_with_group_norm() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.GroupNorm(2, 6), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, groups=2), torch.nn.GroupNorm(4, 8), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(8 * 3 * 3, 10)).double()


def test_lenet_with_group_norm_and_a_mean_loss():
    """A mean loss: each term is that example's gradient / N, and the terms add up to p.grad."""
    torch_model = lenet_with_group_norm()
    model = manualbp.convert(lenet_with_group_norm())
    model.load_state_dict(torch_model.state_dict())
    images, labels = torch.randn(5, 1, 16, 16, dtype=torch.float64), torch.randint(0, 10, (5,))
    expected = vmap_per_example(torch_model, lambda out, y: torch.nn.functional.cross_entropy(out, y) / 5,
                                images, labels)
    with manualbp.per_example(model):
        loss = manualbp.functional.cross_entropy(model(images), labels)
        loss.backward()
    assert_matches(model, expected)
    for parameter in model.parameters():
        torch.testing.assert_close(parameter.grad_sample.sum(0), parameter.grad, rtol=1e-12, atol=1e-13)


def test_the_forward_may_run_before_the_block_and_under_hand_written():
    torch_model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    inputs, targets = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    expected = vmap_per_example(torch_model, lambda out, y: torch.nn.functional.cross_entropy(out, y, reduction="sum"),
                                inputs, targets)
    with manualbp.hand_written():  # torch's own model, its F.linear calls run manualbp's linear
        loss = torch.nn.functional.cross_entropy(torch_model(inputs), targets, reduction="sum")
    with manualbp.per_example(torch_model):
        loss.backward()
    assert_matches(torch_model, expected)


class TinyTransformer(torch.nn.Module):
    """Token embedding (with a padding index), a pre-norm attention block, a head tied to the embedding."""

    def __init__(self, vocab=11, width=8, heads=2):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, width, padding_idx=0)
        self.norm = torch.nn.LayerNorm(width)
        self.attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 16), torch.nn.GELU(), torch.nn.Linear(16, width))
        self.head = torch.nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embedding.weight  # tied: both uses add, per example

    def forward(self, tokens):
        x = self.embedding(tokens)
        h = self.norm(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return self.head(x + self.mlp(x))


def test_a_transformer_with_tied_weights_padding_and_ignored_targets():
    torch_model = TinyTransformer().double()
    model = manualbp.convert(TinyTransformer().double())
    model.head.weight = model.embedding.weight
    model.load_state_dict(torch_model.state_dict())
    tokens = torch.randint(0, 11, (4, 6))
    tokens[:, -2:] = 0  # padding
    targets = torch.randint(0, 11, (4, 6))
    targets[:, -2:] = -100  # ignored

    def loss_of_one(logits, targets):
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")

    expected = vmap_per_example(torch_model, loss_of_one, tokens, targets)
    with manualbp.per_example(model):
        loss_of_one(model(tokens), targets).backward()
    assert_matches(model, expected)
    assert model.embedding.weight.grad_sample[:, 0].abs().sum() > 0  # the head's use reaches the padding row


@pytest.mark.parametrize("positions", [1, 3, 40], ids=["rows", "short-sequence-gram", "long-sequence-materialised"])
def test_ghost_norms_equal_the_norms_of_the_materialised_terms(positions):
    model = manualbp.convert(torch.nn.Sequential(
        torch.nn.Linear(5, 6), torch.nn.LayerNorm(6), torch.nn.ReLU(), torch.nn.Linear(6, 3))).double()
    inputs = torch.randn(4, positions, 5, dtype=torch.float64)
    with manualbp.per_example(model):
        model(inputs).square().sum().backward()
    materialised = {name: p.grad_sample for name, p in model.named_parameters()}
    model.zero_grad()
    with manualbp.per_example(model, norms_only=True):
        model(inputs).square().sum().backward()
    assert_matches(model, materialised, attribute="grad_norm_sample")
    assert not hasattr(model[0].weight, "grad_sample")


@pytest.mark.parametrize("size", [4, 12], ids=["few-positions-gram", "many-positions-materialised"])
def test_conv_ghost_norms(size):
    model = manualbp.convert(torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, groups=2), torch.nn.Flatten())).double()
    images = torch.randn(3, 2, size, size, dtype=torch.float64)
    with manualbp.per_example(model):
        model(images).square().sum().backward()
    materialised = {name: p.grad_sample for name, p in model.named_parameters()}
    with manualbp.per_example(model, norms_only=True):
        model(images).square().sum().backward()
    assert_matches(model, materialised, attribute="grad_norm_sample")


def test_clipped_gradients_are_the_sum_of_the_clipped_terms():
    model = manualbp.convert(lenet_with_group_norm())
    images, labels = torch.randn(6, 1, 16, 16, dtype=torch.float64), torch.randint(0, 10, (6,))
    with manualbp.per_example(model):
        manualbp.functional.cross_entropy(model(images), labels, reduction="sum").backward()
    terms = {name: p.grad_sample for name, p in model.named_parameters()}
    norms = sum(t.flatten(1).square().sum(1) for t in terms.values()).sqrt()  # ‖gₖ‖
    max_norm = norms.median().item()  # some examples clipped, some not
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    assert (scale < 1).any() and (scale == 1).any()
    model.zero_grad()
    losses = manualbp.functional.cross_entropy(model(images), labels, reduction="none")
    returned = manualbp.clipped_gradients(model, losses, max_norm=max_norm)
    torch.testing.assert_close(returned, norms)
    for name, parameter in model.named_parameters():
        expected = (terms[name] * scale.reshape(-1, *[1] * (terms[name].dim() - 1))).sum(0)
        torch.testing.assert_close(parameter.grad, expected, rtol=1e-10, atol=1e-12)


def test_a_wrong_per_example_formula_fails(monkeypatch):
    """The comparison with vmap catches a per-example formula that is wrong while the batch formula is
    right (here δWₖ doubled in one layer: the batch gradient, and so training, would not notice)."""
    model = manualbp.convert(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)))
    model = model.double()
    inputs = torch.randn(4, 3, dtype=torch.float64)
    expected = vmap_per_example(to_torch(model), lambda out: out.sum(), inputs)
    right = LinearFunction.per_example

    def wrong(ctx, grad_output):
        _, grad_weight, grad_bias = right(ctx, grad_output)
        return None, 2 * grad_weight, grad_bias

    monkeypatch.setattr(LinearFunction, "per_example", staticmethod(wrong))
    with manualbp.per_example(model):
        model(inputs).sum().backward()
    with pytest.raises(AssertionError, match="grad_sample of 0.weight"):
        assert_matches(model, expected)
    monkeypatch.setattr(LinearFunction, "per_example", staticmethod(right))
    model.zero_grad()
    with manualbp.per_example(model):
        model(inputs).sum().backward()
    assert_matches(model, expected)


def test_a_parameter_left_to_pytorchs_backward_is_named():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = manualbp.nn.Linear(3, 3)
            self.scale = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return self.linear(x) * self.scale  # PyTorch's own MulBackward: no per-example term

    model = Scaled()
    with pytest.raises(PerExampleError, match="scale"), manualbp.per_example(model):
        model(torch.randn(4, 3)).sum().backward()
    assert hasattr(model.linear.weight, "grad_sample")


def test_blocks_do_not_nest_and_a_new_block_starts_afresh():
    model = manualbp.nn.Linear(3, 2)
    with manualbp.per_example(model):
        model(torch.randn(4, 3)).sum().backward()
    with manualbp.per_example(model):
        model(torch.randn(5, 3)).sum().backward()
    assert model.weight.grad_sample.shape == (5, 2, 3)  # not 4 + 5 examples
    with pytest.raises(RuntimeError, match="nest"), manualbp.per_example(model), manualbp.per_example(model):
        pass


def test_the_gpt_with_its_tied_head():
    from manualbp.gpt import GPT

    model = GPT(vocab_size=9, block_size=6, n_layer=1, n_head=2, n_embd=8).double()
    twin = to_torch(model)
    tokens, targets = torch.randint(0, 9, (3, 6)), torch.randint(0, 9, (3, 6))

    def loss_of_one(logits, targets):
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()) / 3  # the batch's mean

    expected = vmap_per_example(twin, loss_of_one, tokens, targets)
    with manualbp.per_example(model):
        manualbp.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten()).backward()
    assert_matches(model, expected)


def test_ghost_norms_of_tied_weights():
    """‖δθₖ‖ of a weight used twice is the norm of the sum of both uses' terms, not a sum of norms."""
    model = manualbp.convert(TinyTransformer().double())
    model.head.weight = model.embedding.weight
    tokens, targets = torch.randint(0, 11, (3, 5)), torch.randint(0, 11, (3, 5))
    with manualbp.per_example(model):
        manualbp.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten()).backward()
    materialised = {name: p.grad_sample for name, p in model.named_parameters()}
    with manualbp.per_example(model, norms_only=True):
        manualbp.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten()).backward()
    assert_matches(model, materialised, attribute="grad_norm_sample")


class ScaledBlock(torch.nn.Module):
    """What timm and transformers write out by hand: an RMS norm, a layer scale ``x * gamma``, a learned
    position embedding added to every sequence -- under ``hand_written()``, manualbp's mul, add, rms_norm."""

    def __init__(self, width=6, length=5):
        super().__init__()
        self.norm = torch.nn.RMSNorm(width)
        self.linear = torch.nn.Linear(width, width)
        self.gamma = torch.nn.Parameter(torch.rand(width) + 0.5)
        self.position = torch.nn.Parameter(torch.randn(1, length, width))

    def forward(self, x):
        x = x + self.position
        return x + self.linear(self.norm(x)) * self.gamma


def test_parameters_of_tensor_arithmetic_and_rms_norm_under_hand_written():
    torch_model = ScaledBlock().double()
    model = manualbp.convert(ScaledBlock().double())
    model.load_state_dict(torch_model.state_dict())
    inputs, weights = torch.randn(4, 5, 6, dtype=torch.float64), torch.randn(4, 5, 6, dtype=torch.float64)
    expected = vmap_per_example(torch_model, lambda out, w: (out * w).sum(), inputs, weights)
    with manualbp.per_example(model):
        with manualbp.hand_written():
            loss = (model(inputs) * weights).sum()
        loss.backward()
    assert_matches(model, expected)
