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
        output = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)  # manualbp's attention has no dropout
        vector = torch.matmul(q[0, 0], q[0, 0])  # a vector product: torch's
    assert mode.fell_back == {"scaled_dot_product_attention": 1, "_VariableFunctionsClass.matmul": 1}
    assert not backward_coverage(output).hand_written and vector.shape == ()


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
