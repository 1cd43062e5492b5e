"""Losses: softmax + cross-entropy, softmax + the Euclidean (L2) loss, the Euclidean loss.

Each returns a scalar; its backward starts from g = ∂(whatever follows)/∂L, 1 for a plain
``loss.backward()``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manualbp.layers.base import (
    LayerFunction,
    Loss,
    apply,
    autocast_enabled,
    check_floating,
    is_traced,
    multiply,
    owns_buffers,
)
from manualbp.layers.softmax import log_softmax_forward

__all__ = [
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "softmax_euclidean_forward",
    "softmax_euclidean_backward",
    "euclidean_loss_forward",
    "euclidean_loss_backward",
    "REDUCTIONS",
    "SoftmaxCrossEntropyFunction",
    "softmax_cross_entropy",
    "SoftmaxCrossEntropyLoss",
    "SoftmaxEuclideanFunction",
    "softmax_euclidean_loss",
    "SoftmaxEuclideanLoss",
    "TorchSoftmaxEuclideanLoss",
    "EuclideanLossFunction",
    "euclidean_loss",
    "EuclideanLoss",
    "TorchEuclideanLoss",
]


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


def _target_distribution(target: Tensor, logits: Tensor) -> Tensor:
    """Targets as probabilities y: (N, C), like logits. Class indices (N,) become one-hot rows
    (by comparison with 0..C-1, which, unlike ``F.one_hot``, also takes N = 0 or C = 0)."""
    if target.is_floating_point():
        return target
    classes = torch.arange(logits.shape[-1], device=target.device)
    return (target.unsqueeze(-1) == classes).to(logits.dtype)  # y_nk = 1[k = target_n]


def _cross_entropy_batch_size(logits: Tensor) -> int:
    """N, counted as ``F.cross_entropy`` counts it (elements / classes): 0 when there are no
    classes, so that the mean over the batch is NaN there, as in PyTorch."""
    return logits.shape[0] if logits.shape[-1] else 0


def softmax_cross_entropy_forward(logits: Tensor, target: Tensor) -> Tensor:
    """L = −(1/N) Σ_n Σ_k y_nk log yp_nk with yp = softmax(logits).

    logits: (N, C); target: class indices (N,) or probabilities / one-hot rows (N, C).
    Returns the scalar mean loss over the batch.
    """
    log_probs = log_softmax_forward(logits, -1)  # log yp = logits − log Σ exp(logits)
    if target.is_floating_point():
        return -(target * log_probs).sum() / _cross_entropy_batch_size(logits)  # L = −(1/N) Σ_n Σ_k y_nk log yp_nk
    # nll_loss picks and averages, in one kernel: (targets are checked to lie in [0, C) before,
    # so its ignore_index never applies).
    return torch.nn.functional.nll_loss(log_probs, target)  # L = −(1/N) Σ_n log yp_n,target


def softmax_cross_entropy_backward(
    grad_output: Tensor, logits: Tensor, target: Tensor, needs_target_grad: bool = False
) -> tuple[Tensor, Tensor | None]:
    """δlogits = (yp − y)/N · g and, for probability targets that need it, δy = −log(yp)/N · g.

    (For soft targets whose rows do not sum to 1, δlogits = (yp·Σ_k y_k − y)/N · g.)

    grad_output g: scalar; logits: (N, C); target: (N,) indices or (N, C) probabilities.
    Returns δlogits: (N, C) and δy: (N, C) or None.

    For class indices (y one-hot) it is computed as yp·s, then −s added at each row's target
    (s = g/N): no (N, C) one-hot is built, the buffer of yp is the only one, and the order of the
    operations is PyTorch's (so an infinite g gives NaN at the target as in PyTorch, where
    (yp − 1)·g would give −inf).
    """
    scale = grad_output / _cross_entropy_batch_size(logits)  # s = g/N
    in_place = owns_buffers(scale)
    if not target.is_floating_point():
        probs = torch.softmax(logits, dim=-1)  # yp = exp(logits) / Σ exp(logits)
        grad_logits = multiply(probs, scale, into_first=in_place)  # yp·s ...
        minus_scale, at_target = (-scale).expand(target.shape[0], 1), target.unsqueeze(1)
        add_at_target = grad_logits.scatter_add_ if in_place else grad_logits.scatter_add
        return add_at_target(1, at_target, minus_scale), None  # ... − y·s: δlogits = (yp − y)·s
    log_probs = log_softmax_forward(logits, -1)  # log yp = logits − log Σ exp(logits)
    grad_target = None
    if needs_target_grad:
        grad_target = multiply(log_probs.neg(), scale, into_first=in_place)  # δy = −log(yp)/N · g
    probs = log_probs.exp_() if in_place else log_probs.exp()  # yp
    # rows need not sum to 1 (F.cross_entropy allows it): Σ_k y_k ≠ 1; = yp for the slide's y
    grad_logits = multiply(probs, target.sum(dim=-1, keepdim=True), into_first=in_place)  # yp·Σy
    grad_logits = grad_logits.sub_(target) if in_place else grad_logits - target  # yp·Σy − y
    return multiply(grad_logits, scale, into_first=in_place), grad_target  # (yp·Σy − y)/N · g


def softmax_euclidean_forward(logits: Tensor, target: Tensor) -> Tensor:
    """L = (1/N) Σ_n ½‖yp_n − y_n‖² with yp = softmax(logits): the lecture's question "what if we
    used the L2 loss with softmax?". logits: (N, C); target: indices (N,) or probabilities (N, C).
    Returns a scalar (a mean over the batch, like softmax_cross_entropy)."""
    probs = torch.softmax(logits, dim=-1)  # yp = softmax(logits)
    difference = probs - _target_distribution(target, logits)
    return 0.5 * (difference**2).sum() / logits.shape[0]  # L = (1/N) Σ ½‖yp − y‖²


def softmax_euclidean_backward(
    grad_output: Tensor, logits: Tensor, target: Tensor, needs_target_grad: bool = False
) -> tuple[Tensor, Tensor | None]:
    """δlogits = (diag(yp) − yp ypᵀ)·(yp − y)/N · g: the Euclidean loss's δYp pushed back through
    the softmax Jacobian (∂yp_k/∂logits_i = yp_i(1[i=k] − yp_k)). For probability targets that
    need it, δy = −(yp − y)/N · g. Shapes: logits (N, C) -> δlogits (N, C), δy (N, C) or None."""
    probs = torch.softmax(logits, dim=-1)  # yp = softmax(logits)
    target_rows = _target_distribution(target, logits)
    grad_probs = (probs - target_rows) * (grad_output / logits.shape[0])  # δyp = (yp − y)/N · g
    projected = (probs * grad_probs).sum(dim=-1, keepdim=True)  # ypᵀ δyp, per row
    grad_logits = probs * (grad_probs - projected)  # δlogits = (diag(yp) − yp ypᵀ) δyp
    return grad_logits, (-grad_probs if needs_target_grad else None)


def euclidean_loss_forward(pred: Tensor, target: Tensor, reduction: str = "sum") -> Tensor:
    """L = ½‖Yp − Y‖² summed over everything; ``"mean"`` divides by the batch size N = pred.shape[0].

    pred, target: the same shape (N, *). Returns a scalar.
    """
    loss = 0.5 * ((pred - target) ** 2).sum()  # L = ½‖Yp − Y‖²
    return loss / _batch_size(pred) if reduction == "mean" else loss


def euclidean_loss_backward(
    grad_output: Tensor, pred: Tensor, target: Tensor, reduction: str = "sum"
) -> Tensor:
    """δYp = (Yp − Y)·g (divided by N for ``"mean"``); δY is its negative. Shape of pred."""
    scale = grad_output / _batch_size(pred) if reduction == "mean" else grad_output
    return (pred - target) * scale  # δYp = (Yp − Y)·g


def _batch_size(tensor: Tensor) -> int:
    return tensor.shape[0] if tensor.dim() > 0 else 1


# ----------------------------------------------------------------------------------------------
# The layers: Function, public function, Module (and the torch twin, where torch has none)
# ----------------------------------------------------------------------------------------------


def _loss_tangent(grads, tangents) -> Tensor:
    """Forward-mode derivative of a scalar loss: L̇ = Σ_inputs Σ (∂L/∂input)·(input tangent),
    with ∂L/∂input the backward formula evaluated at g = 1 (missing tangents count as 0)."""
    return sum((grad * tangent).sum() for grad, tangent in zip(grads, tangents, strict=True) if tangent is not None)


class SoftmaxCrossEntropyFunction(LayerFunction):
    """Mean softmax cross-entropy with backward (yp − y)/N · g."""

    @staticmethod
    def forward(logits, target):
        return softmax_cross_entropy_forward(logits, target)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target = inputs
        ctx.save_for_backward(logits, target)
        ctx.save_for_forward(logits, target)

    @staticmethod
    def backward(ctx, grad_output):
        logits, target = ctx.saved_tensors
        grad_logits, grad_target = softmax_cross_entropy_backward(
            grad_output, logits, target, ctx.needs_input_grad[1]
        )
        return (grad_logits if ctx.needs_input_grad[0] else None), grad_target

    @staticmethod
    def jvp(ctx, logits_tangent, target_tangent):
        logits, target = ctx.saved_tensors
        one = torch.ones((), dtype=logits.dtype, device=logits.device)
        grads = softmax_cross_entropy_backward(one, logits, target, target_tangent is not None)
        return _loss_tangent(grads, (logits_tangent, target_tangent))


def softmax_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of −Σ_k y_k log softmax(logits)_k, like ``F.cross_entropy``.

    logits: (N, C); target: class indices (N,) in [0, C), or probabilities / one-hot rows (N, C).
    Returns a scalar. Under autocast it runs in float32, like ``F.cross_entropy``.
    """
    target = _check_class_targets("softmax_cross_entropy", logits, target)
    return apply(SoftmaxCrossEntropyFunction, logits, target, autocast_to="float32")


class SoftmaxCrossEntropyLoss(
    torch.nn.Module, Loss, torch_twin=torch.nn.CrossEntropyLoss, name="softmax_cross_entropy"
):
    """Mean softmax cross-entropy with backward (yp − y)/N; like ``torch.nn.CrossEntropyLoss()``.

    logits (N, C); target: class indices (N,) or probabilities / one-hot rows (N, C). -> scalar.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return softmax_cross_entropy(logits, target)

    def function_and_arguments(self, logits: Tensor, target: Tensor):
        return SoftmaxCrossEntropyFunction, (logits, _check_class_targets("softmax_cross_entropy", logits, target))


class SoftmaxEuclideanFunction(LayerFunction):
    """Mean ½‖softmax(logits) − y‖² with backward (diag(yp) − yp ypᵀ)(yp − y)/N · g."""

    @staticmethod
    def forward(logits, target):
        return softmax_euclidean_forward(logits, target)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target = inputs
        ctx.save_for_backward(logits, target)
        ctx.save_for_forward(logits, target)

    @staticmethod
    def backward(ctx, grad_output):
        logits, target = ctx.saved_tensors
        grad_logits, grad_target = softmax_euclidean_backward(
            grad_output, logits, target, ctx.needs_input_grad[1]
        )
        return (grad_logits if ctx.needs_input_grad[0] else None), grad_target

    @staticmethod
    def jvp(ctx, logits_tangent, target_tangent):
        logits, target = ctx.saved_tensors
        one = torch.ones((), dtype=logits.dtype, device=logits.device)
        grads = softmax_euclidean_backward(one, logits, target, target_tangent is not None)
        return _loss_tangent(grads, (logits_tangent, target_tangent))


def softmax_euclidean_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of ½‖softmax(logits) − y‖²: softmax with the L2 loss instead of
    cross-entropy (the lecture's open question).

    logits: (N, C); target: class indices (N,) in [0, C), or probabilities / one-hot rows (N, C).
    Returns a scalar; under autocast it runs in float32.
    """
    target = _check_class_targets("softmax_euclidean_loss", logits, target)
    return apply(SoftmaxEuclideanFunction, logits, target, autocast_to="float32")


class TorchSoftmaxEuclideanLoss(torch.nn.Module):
    """Mean ½‖softmax(logits) − y‖² from torch built-ins; the torch twin of ``SoftmaxEuclideanLoss``."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if not target.is_floating_point():  # class indices: one-hot rows (F.one_hot refuses 0 classes)
            target = torch.nn.functional.one_hot(target, max(logits.shape[-1], 1))[:, : logits.shape[-1]]
            target = target.to(logits.dtype)
        return 0.5 * ((torch.softmax(logits, dim=-1) - target) ** 2).sum() / logits.shape[0]


class SoftmaxEuclideanLoss(torch.nn.Module, Loss, torch_twin=TorchSoftmaxEuclideanLoss, name="softmax_euclidean"):
    """Mean ½‖softmax(logits) − y‖², backward through the softmax Jacobian diag(p) − ppᵀ.

    logits (N, C); target: class indices (N,) or probabilities / one-hot rows (N, C). -> scalar.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return softmax_euclidean_loss(logits, target)

    def function_and_arguments(self, logits: Tensor, target: Tensor):
        return SoftmaxEuclideanFunction, (logits, _check_class_targets("softmax_euclidean_loss", logits, target))


class EuclideanLossFunction(LayerFunction):
    """½‖Yp − Y‖² (sum, or divided by N) with backward (Yp − Y)·g."""

    @staticmethod
    def forward(pred, target, reduction):
        return euclidean_loss_forward(pred, target, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pred, target, reduction = inputs
        ctx.reduction = reduction
        ctx.save_for_backward(pred, target)
        ctx.save_for_forward(pred, target)

    @staticmethod
    def backward(ctx, grad_output):
        pred, target = ctx.saved_tensors
        grad_pred = euclidean_loss_backward(grad_output, pred, target, ctx.reduction)
        return (
            grad_pred if ctx.needs_input_grad[0] else None,
            -grad_pred if ctx.needs_input_grad[1] else None,  # δY = −δYp
            None,
        )

    @staticmethod
    def jvp(ctx, pred_tangent, target_tangent, reduction_tangent):
        pred, target = ctx.saved_tensors
        one = torch.ones((), dtype=pred.dtype, device=pred.device)
        grad_pred = euclidean_loss_backward(one, pred, target, ctx.reduction)
        return _loss_tangent((grad_pred, -grad_pred), (pred_tangent, target_tangent))


REDUCTIONS = ("sum", "mean")


def euclidean_loss(pred: Tensor, target: Tensor, reduction: str = "sum") -> Tensor:
    """½‖Yp − Y‖², the slides' Euclidean loss; ``reduction="mean"`` divides by the batch size N.

    pred, target: the same shape (N, *); no broadcasting. Returns a scalar.
    (``"mean"`` is per example, not per element as in ``torch.nn.MSELoss``.)
    """
    return apply(EuclideanLossFunction, *_euclidean_arguments(pred, target, reduction), autocast_to="float32")


class TorchEuclideanLoss(torch.nn.Module):
    """½‖Yp − Y‖² from torch built-ins; the torch twin of ``EuclideanLoss``."""

    def __init__(self, reduction: str = "sum") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        loss = 0.5 * ((pred - target) ** 2).sum()
        return loss / pred.shape[0] if self.reduction == "mean" else loss


class EuclideanLoss(torch.nn.Module, Loss, torch_twin=TorchEuclideanLoss, name="euclidean"):
    """½‖Yp − Y‖² with backward (Yp − Y); ``reduction="mean"`` divides by the batch size N.

    pred and target: the same shape (N, *). -> scalar.
    """

    def __init__(self, reduction: str = "sum") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)  # fail when built, not at the first batch

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return euclidean_loss(pred, target, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"

    def to_torch(self) -> TorchEuclideanLoss:
        return TorchEuclideanLoss(self.reduction)

    def function_and_arguments(self, pred: Tensor, target: Tensor):
        return EuclideanLossFunction, _euclidean_arguments(pred, target, self.reduction)


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------


def _check_class_targets(name: str, logits: Tensor, target: Tensor) -> Tensor:
    """Check logits (N, C) and targets; return the targets, class indices as int64."""
    if logits.dim() != 2:
        raise ValueError(
            f"{name}: expected logits of shape (N, C), got {tuple(logits.shape)}; "
            f"for a single example use logits.unsqueeze(0)"
        )
    batch_size, num_classes = logits.shape
    check_floating(name, "logits", logits)
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(
                f"{name}: probability targets must have the logits' shape "
                f"{tuple(logits.shape)}, got {tuple(target.shape)}"
            )
        return target
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            f"{name}: target must be class indices (an integer tensor of shape "
            f"(N,)) or probabilities (a float tensor of shape (N, C)), got dtype {target.dtype}"
        )
    if tuple(target.shape) != (batch_size,):
        raise ValueError(
            f"{name}: expected {batch_size} class targets (shape ({batch_size},), "
            f"one per row of logits), got shape {tuple(target.shape)}"
        )
    if batch_size and not is_traced(target):
        _check_class_range(name, target, num_classes)
    return target.long()  # gather takes int64 indices


def _classes_in_range(target: Tensor, num_classes: int) -> Tensor:
    """A 0-d bool tensor, on the target's device: every class index lies in [0, C)."""
    return ((target >= 0) & (target < num_classes)).all()


def _check_class_range(name: str, target: Tensor, num_classes: int) -> None:
    """Class targets in [0, C). On the CPU, checked now, naming the values found. On an accelerator
    (or meta), reading a value would make the host wait for the device every step (a sync): there
    the check is an assertion the device runs asynchronously (``torch._assert_async``), which
    stops the program at a later sync with this message instead."""
    advice = "check the labels, or give the last layer as many outputs as there are classes"
    if target.device.type != "cpu":
        # torch-private: PyTorch has no public assertion that runs on the device without a sync.
        torch._assert_async(_classes_in_range(target, num_classes),
                            f"{name}: class targets must lie in [0, {num_classes}); {advice}")
        return
    low, high = (value.item() for value in torch.aminmax(target))
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{name}: class targets must lie in [0, {num_classes}) for {num_classes} classes, "
            f"got values from {low} to {high}; {advice}"
        )


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"euclidean_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _euclidean_arguments(pred: Tensor, target: Tensor, reduction: str) -> tuple[Tensor, Tensor, str]:
    """The checked arguments of euclidean_loss: the target in pred's dtype (under autocast both
    are cast to float32 by ``apply`` instead, so the target is not rounded first)."""
    _check_reduction(reduction)
    check_floating("euclidean_loss", "pred", pred)
    if pred.shape != target.shape:
        raise ValueError(
            f"euclidean_loss: pred and target must have the same shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}; reshape one of them (no broadcasting is done, so that "
            f"(N, 1) against (N,) cannot silently become (N, N))"
        )
    if not (autocast_enabled(pred.device.type) and target.is_floating_point()):
        target = target.to(pred.dtype)
    return pred, target, reduction
