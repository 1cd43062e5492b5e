"""Whole models by hand: after ``manualbp.convert`` and under ``manualbp.hand_written()``, no
arithmetic backward node is left to PyTorch (views, slicing, copies and residual adds may stay),
and the loss and every gradient equal the original model's in float64.

The models are written as their users write them: a nanoGPT transcription (torch.nn + F.*, in
tests/models.py), torchvision's VisionTransformer, ResNet-18 and MobileNetV2, and
torch.nn.TransformerEncoder."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from models import nanogpt_example

import manualbp
import manualbp.functional as mbf
from manualbp.coverage import backward_coverage
from manualbp.reference import to_torch

RELATIVE = 1e-10  # the bar; seen: ≤ 7e-16 (transformers), 2e-13 (resnet18), 7e-12 (mobilenet_v2)


def _vit():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=10)
    return model.double(), torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([3, 7])


def _image_classifier(factory):
    def build():
        torch.manual_seed(0)
        images = torch.randn(4, 3, 32, 32, dtype=torch.float64)  # batch 4: batch norm over 4 values at 1×1
        return factory(num_classes=10).double(), images, torch.tensor([3, 7, 0, 9])
    return build


class EncoderClassifier(torch.nn.Module):
    """nn.TransformerEncoder over a causal mask and a key padding mask, then a Linear per position."""

    def __init__(self, activation="relu", dropout=0.0):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=dropout, activation=activation,
                                                 batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        length = x.shape[1]
        causal = torch.nn.Transformer.generate_square_subsequent_mask(length, dtype=x.dtype)
        padding = torch.zeros(x.shape[:2], dtype=torch.bool)
        padding[0, -1] = True
        return self.head(self.encoder(x, mask=causal, src_key_padding_mask=padding, is_causal=True))


def _encoder(activation):
    def build():
        torch.manual_seed(0)
        return (EncoderClassifier(activation).double(), torch.randn(3, 6, 16, dtype=torch.float64),
                torch.randint(0, 5, (3, 6)))
    return build


def _classifier_loss(model, inputs, targets):
    logits = model(inputs)
    if logits.dim() == 3:  # per position: (N, T, C) -> (N, C, T), as F.cross_entropy takes it
        logits = logits.transpose(1, 2)
    return F.cross_entropy(logits, targets)


MODELS = {
    "nanoGPT": lambda: (*nanogpt_example(), None),
    "VisionTransformer": _vit,
    "resnet18": _image_classifier(torchvision.models.resnet18),
    "mobilenet_v2": _image_classifier(torchvision.models.mobilenet_v2),
    "TransformerEncoder relu": _encoder("relu"),
    "TransformerEncoder gelu": _encoder("gelu"),
}


def _loss(model, inputs, targets):
    torch.manual_seed(1)  # dropout: the same masks in both runs
    if targets is None:  # nanoGPT computes its loss in forward
        return model(*inputs)
    return _classifier_loss(model, inputs, targets)


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """‖ours − theirs‖ / ‖theirs‖: the whole tensor's relative error (as tests/test_convert.py)."""
    return ((ours - theirs).norm() / theirs.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("name", MODELS)
def test_convert_and_hand_written_leave_no_arithmetic_node_to_pytorch_and_change_nothing(name):
    model, inputs, targets = MODELS[name]()
    original = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nanoGPT's LayerNorm class has no twin: the mode runs its F.layer_norm
        converted = manualbp.convert(model)
    with manualbp.hand_written() as mode:
        loss = _loss(converted, inputs, targets)
    report = backward_coverage(loss)
    assert report.complete, f"{name}: {report}"
    assert report.arithmetic > 0 and not mode.fell_back
    expected = _loss(original, inputs, targets)
    assert _relative_error(loss, expected) <= RELATIVE
    ours = torch.autograd.grad(loss, list(converted.parameters()))
    theirs = torch.autograd.grad(expected, list(original.parameters()))
    assert len(ours) == len(theirs)
    # A gradient that is 0 in exact arithmetic (a bias a training-mode batch norm cancels) is rounding
    # noise in both, ~1e-14: measured against the model's largest gradient instead.
    scale = max(grad.norm() for grad in theirs)
    for (parameter_name, _), our_grad, their_grad in zip(original.named_parameters(), ours, theirs, strict=True):
        error = (our_grad - their_grad).norm()
        assert error <= RELATIVE * max(their_grad.norm(), 1e-3 * scale), (parameter_name, error.item())


@pytest.mark.parametrize("name", ["nanoGPT", "VisionTransformer", "TransformerEncoder gelu"])
def test_without_the_mode_or_convert_pytorch_keeps_nodes(name):
    """The test above can fail: each half alone leaves PyTorch's backward somewhere."""
    model, inputs, targets = MODELS[name]()
    assert not backward_coverage(_loss(model, inputs, targets)).hand_written  # torch as built: nothing of ours
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = manualbp.convert(model)
    report = backward_coverage(_loss(converted, inputs, targets))
    assert report.hand_written and not report.complete, str(report)


def test_to_torch_gives_back_the_encoder_with_torchs_activation():
    model = _encoder("relu")()[0]
    converted = manualbp.convert(copy.deepcopy(model))
    layer = converted.encoder.layers[0]
    assert type(layer.self_attn) is manualbp.nn.MultiheadAttention and layer.activation is mbf.relu
    back = to_torch(converted)
    assert type(back.encoder.layers[0].self_attn) is torch.nn.MultiheadAttention
    assert back.encoder.layers[0].activation is F.relu
    assert converted.state_dict().keys() == model.state_dict().keys() == back.state_dict().keys()


def test_dropout_in_attention_runs_by_hand_in_training():
    """Dropout on the attention weights (TransformerEncoderLayer's default 0.1): the weights are made
    on their own, dropped out, and multiplied into V, each node hand-written."""
    torch.manual_seed(0)
    model = manualbp.convert(EncoderClassifier("gelu", dropout=0.1).double())
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    with manualbp.hand_written():
        loss = _classifier_loss(model, x, torch.randint(0, 5, (3, 6)))
    report = backward_coverage(loss)
    assert report.complete and report.hand_written["AttentionWeightsFunction"] == 2, str(report)
    assert report.hand_written["DropoutFunction"] >= 2


# ----------------------------------------------------------------------------------------------
# hand_written() on its own
# ----------------------------------------------------------------------------------------------


def test_hand_written_replaces_functional_calls_and_passes_the_rest_through():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    with manualbp.hand_written() as mode:
        y = torch.softmax(x, dim=-1) @ x.mT  # torch.softmax and Tensor.__matmul__: manualbp's
        z = (y.cos() * 2).sum()  # mul and sum: manualbp's; cos: PyTorch's, untouched
    report = backward_coverage(z)
    assert report.hand_written == {"SoftmaxFunction": 1, "MatmulFunction": 1, "MulFunction": 1, "SumFunction": 1}
    assert set(report.pytorch) == {"CosBackward0"}
    assert sum(mode.replaced.values()) == 4 and not mode.fell_back
    torch.testing.assert_close(z, ((torch.softmax(x, -1) @ x.mT).cos() * 2).sum(), rtol=1e-15, atol=0)


def test_arguments_manualbp_does_not_take_fall_back_to_pytorch():
    q = torch.randn(2, 3, 4, requires_grad=True)
    with manualbp.hand_written() as mode:
        vector = torch.matmul(q[0, 0], q[0, 0])  # a vector product: torch's
    assert mode.fell_back == {"_VariableFunctionsClass.matmul": 1}
    assert not backward_coverage(vector).hand_written and vector.shape == ()


# ----------------------------------------------------------------------------------------------
# Attention as modern LLMs call it: grouped-query heads, scale, masks as transformers passes them,
# dropout on the weights
# ----------------------------------------------------------------------------------------------


def _torch_math_attention(*args, **settings):
    """PyTorch's math kernel (differentiable twice, float64 exact)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(*args, **settings)


def _grouped_inputs(mask_kind=None, heads=4, kv_heads=2):
    torch.manual_seed(0)
    q = torch.randn(2, heads, 5, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, kv_heads, 6, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, kv_heads, 6, 4, dtype=torch.float64, requires_grad=True)
    mask = None
    if mask_kind == "bool":  # (B, 1, L, S), as transformers passes it
        mask = torch.rand(2, 1, 5, 6) > 0.3
        mask[..., 0] = True  # every row attends somewhere
    elif mask_kind == "float":
        mask = torch.randn(2, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    return q, k, v, mask


@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
@pytest.mark.parametrize("settings", [{}, {"scale": 0.3}], ids=["default_scale", "scale"])
def test_grouped_query_attention_equals_torchs_in_values_and_gradients(mask_kind, settings):
    q, k, v, mask = _grouped_inputs(mask_kind)
    ours = mbf.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True, **settings)
    theirs = _torch_math_attention(q, k, v, attn_mask=mask, enable_gqa=True, **settings)
    assert backward_coverage(ours).hand_written == {"AttentionFunction": 1}
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-14)
    inputs = [t for t in (q, k, v, mask) if t is not None and t.requires_grad]
    grad_output = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, inputs, grad_output), torch.autograd.grad(theirs, inputs, grad_output),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_grouped_query_attention_is_causal_and_passes_gradcheck_twice():
    q, k, v, _ = _grouped_inputs(heads=6, kv_heads=3)
    k, v = k[:, :, :5].detach().requires_grad_(), v[:, :, :5].detach().requires_grad_()

    def attention(q, k, v):
        return mbf.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    torch.testing.assert_close(attention(q, k, v), _torch_math_attention(q, k, v, is_causal=True, enable_gqa=True),
                               rtol=1e-13, atol=1e-14)
    assert torch.autograd.gradcheck(attention, (q, k, v))
    assert torch.autograd.gradgradcheck(attention, (q, k, v))


def test_grouped_query_attention_refuses_heads_that_do_not_divide():
    q = torch.randn(1, 3, 4, 2)
    k = torch.randn(1, 2, 4, 2)
    with pytest.raises(ValueError, match="multiple of the key and value heads"):
        mbf.scaled_dot_product_attention(q, k, k, enable_gqa=True)


def test_attention_dropout_is_the_formula_with_the_drawn_mask():
    """The keep mask is drawn from torch's generator and saved: with the same seed the mask drawn
    again gives PyTorch's math with that mask applied by hand, values and every gradient; gradcheck
    and gradgradcheck on the Function with a fixed mask."""
    q, k, v, mask = _grouped_inputs("float")
    torch.manual_seed(5)
    ours = mbf.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.4, enable_gqa=True)
    torch.manual_seed(5)
    keep = torch.empty(2, 4, 5, 6, dtype=torch.float64).bernoulli_(0.6).bool()
    weights = torch.softmax(q @ k.repeat_interleave(2, 1).mT / 3 ** 0.5 + mask, dim=-1)
    theirs = (weights * keep / 0.6) @ v.repeat_interleave(2, 1)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-14)
    grad_output = torch.randn_like(ours)
    inputs = (q, k, v, mask)
    for a, b in zip(torch.autograd.grad(ours, inputs, grad_output), torch.autograd.grad(theirs, inputs, grad_output),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)

    def attention(q, k, v, mask):
        return mbf.AttentionFunction.apply(q, k, v, mask, 0.5, False, 2, keep, 0.4)

    assert torch.autograd.gradcheck(attention, inputs)
    assert torch.autograd.gradgradcheck(attention, inputs)


def test_attention_dropout_keeps_weights_with_probability_one_minus_p():
    """Same distribution as PyTorch's dropout: each weight kept with probability 1 − p and scaled by
    1/(1 − p), so the output's mean over many draws is the output without dropout."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 4, 3, dtype=torch.float64) for _ in range(3))
    v = torch.eye(4, dtype=torch.float64).reshape(1, 1, 4, 4)  # O = P̃: the weights themselves
    draws = torch.stack([mbf.scaled_dot_product_attention(q, k, v, dropout_p=0.3) for _ in range(4000)])
    kept = (draws != 0).double().mean()
    assert abs(kept - 0.7) < 0.01, kept
    torch.testing.assert_close(draws.mean(0), mbf.scaled_dot_product_attention(q, k, v), atol=0.02, rtol=0)
    with manualbp.hand_written() as mode:
        F.scaled_dot_product_attention(q, k, v, dropout_p=0.3)
    assert mode.replaced == {"scaled_dot_product_attention": 1} and not mode.fell_back


def test_hand_written_works_under_torch_compile():
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.GELU(), torch.nn.LayerNorm(6))
    mode = manualbp.hand_written()

    def loss_of(x):
        with mode:
            return F.cross_entropy(model(x), torch.tensor([1, 2]))

    x = torch.randn(2, 6)
    compiled = torch.compile(loss_of, backend="eager")  # Dynamo traces the mode; no C compiler needed
    torch.testing.assert_close(compiled(x), F.cross_entropy(model(x), torch.tensor([1, 2])))
    # equal values alone would also hold if the mode did nothing: manualbp's functions ran
    assert {"linear", "gelu", "layer_norm", "cross_entropy"} <= set(mode.replaced), mode.replaced


def test_cross_entropy_with_ignored_targets_under_torch_compile_is_torchs():
    """Traced, the targets cannot be read: every target must take the path that handles ignore_index
    (the one-node formula would scatter at index −100: an error, or on a device, garbage)."""
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, -100, 2, 3, -100, 1])
    compiled = torch.compile(lambda x, t: mbf.cross_entropy(x, t), backend="eager")
    ours = compiled(x, targets)
    theirs = F.cross_entropy(x, targets)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=0)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(theirs, x)[0],
                               rtol=1e-13, atol=1e-16)


def test_backward_coverage_refuses_a_tensor_without_a_graph():
    with pytest.raises(ValueError, match="expected tensors computed from something that requires grad"):
        backward_coverage(torch.ones(3))


def test_coverage_command_prints_the_three_reports(capsys):
    from manualbp.coverage import main

    assert main(["models:nanogpt_example"]) == 0  # tests/ is on sys.path under pytest
    out = capsys.readouterr().out
    assert "as built:\n  0 of" in out and "under manualbp.hand_written():\n  " in out
    last = out.rsplit("under manualbp.hand_written():\n", 1)[1]
    written, total = last.split(" arithmetic")[0].strip().split(" of ")
    assert written == total and int(total) > 10


# ----------------------------------------------------------------------------------------------
# RMSNorm: manualbp.nn.RMSNorm, convert, and F.rms_norm under hand_written()
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, normalized_shape, eps", [((2, 3, 5), (5,), None), ((2, 3, 4), (3, 4), 1e-3)])
@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_equals_torchs_and_passes_gradcheck_twice(shape, normalized_shape, eps, affine):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(normalized_shape, dtype=torch.float64, requires_grad=True) if affine else None
    ours = mbf.rms_norm(x, normalized_shape, weight, eps)
    theirs = F.rms_norm(x, normalized_shape, weight, eps)
    assert backward_coverage(ours).hand_written == {"RMSNormFunction": 1}
    torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=1e-15)
    inputs = (x,) if weight is None else (x, weight)
    grad_output = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, inputs, grad_output), torch.autograd.grad(theirs, inputs, grad_output),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)

    def rms(*inputs):
        return mbf.rms_norm(inputs[0], normalized_shape, inputs[1] if affine else None, eps)

    assert torch.autograd.gradcheck(rms, inputs)
    assert torch.autograd.gradgradcheck(rms, inputs)
    tangents = tuple(torch.randn_like(t) for t in inputs)  # forward mode: the jvp
    torch.testing.assert_close(torch.func.jvp(rms, inputs, tangents)[1],
                               torch.func.jvp(lambda *i: F.rms_norm(i[0], normalized_shape, i[1] if affine else None,
                                                                    eps), inputs, tangents)[1])


def test_rms_norm_module_is_converted_and_f_rms_norm_runs_by_hand_under_the_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.RMSNorm(6)).double()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
    converted = manualbp.convert(copy.deepcopy(model))
    assert type(converted[1]) is manualbp.nn.RMSNorm
    x = torch.randn(3, 6, dtype=torch.float64)
    loss = converted(x).square().sum()
    assert backward_coverage(loss).hand_written == {"LinearFunction": 1, "RMSNormFunction": 1}
    torch.testing.assert_close(loss, model(x).square().sum(), rtol=1e-14, atol=0)
    with manualbp.hand_written() as mode:
        y = F.rms_norm(x.requires_grad_(), (6,), eps=1e-6)
    assert mode.replaced == {"rms_norm": 1}
    assert backward_coverage(y).hand_written == {"RMSNormFunction": 1}


# ----------------------------------------------------------------------------------------------
# Data movement is structure, arithmetic is not
# ----------------------------------------------------------------------------------------------

_INDEX = torch.tensor([0, 2, 2])
_MOVES = {  # each forward only moves, selects or zeroes values
    "pad": lambda x: F.pad(x, (1, 1)),
    "roll": lambda x: x.roll(1, 0),
    "flip": lambda x: x.flip(0),
    "gather": lambda x: x.gather(0, _INDEX[:, None].expand(3, 4)),
    "index_select": lambda x: x.index_select(0, _INDEX),
    "advanced_index": lambda x: x[_INDEX],
    "where": lambda x: torch.where(x > 0, x, x.flip(0)),
    "masked_fill": lambda x: x.masked_fill(x > 0, 0.0),
    "repeat": lambda x: x.repeat(2, 1),
    "repeat_interleave": lambda x: x.repeat_interleave(torch.tensor([1, 2, 1]), 0),
    "expand": lambda x: x[:1].expand(3, 4),
    "contiguous": lambda x: x.t().contiguous(),
    "cat": lambda x: torch.cat([x, x.chunk(2, dim=1)[0]], dim=1),
    "stack": lambda x: torch.stack([x, x]),
    "tril": lambda x: x.tril(),
}
_COMBINES = {  # each forward sums or scales values: arithmetic
    "index_add": lambda x: torch.zeros(3, 4, dtype=x.dtype).index_add(0, _INDEX, x),
    "scatter_add": lambda x: torch.zeros(3, 4, dtype=x.dtype).scatter_add(0, _INDEX[:, None].expand(3, 4), x),
    "reflection_pad": lambda x: F.pad(x[None], (1, 1), mode="reflect"),
    "scale": lambda x: x * 2.0,
    "sum": lambda x: x.sum(0),
}


@pytest.mark.parametrize("name", list(_MOVES))
def test_data_movement_is_counted_as_structure(name):
    x = torch.randn(3, 4, requires_grad=True)
    report = backward_coverage(_MOVES[name](x))
    assert report.arithmetic == 0 and report.complete and report.structure, report


@pytest.mark.parametrize("name", list(_COMBINES))
def test_ops_that_sum_or_scale_values_stay_arithmetic(name):
    x = torch.randn(3, 4, requires_grad=True)
    report = backward_coverage(_COMBINES[name](x))
    assert report.arithmetic == 1 and not report.complete, report
