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
    hand_writes,
    is_traced,
    multiply,
    owns_buffers,
)
from manualbp.layers.sharing import share_state
from manualbp.layers.softmax import log_softmax_forward, softmax_forward

__all__ = [
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "CrossEntropyFunction",
    "cross_entropy",
    "CrossEntropyLoss",
    "positions_as_rows",
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
    log_probs = log_softmax_forward(logits, -1, short_rows_in_ops=True)  # log yp = logits − log Σ exp(logits)
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
        probs = softmax_forward(logits, -1, short_rows_in_ops=True)  # yp = exp(logits) / Σ exp(logits)
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


def cross_entropy_forward(logits: Tensor, target: Tensor, reduction: str, divisor: Tensor) -> Tensor:
    """Per row l_n = −Σ_k y_nk log yp_nk, yp = softmax(logits); summed, divided by ``divisor``
    ("mean") or kept per row ("none").

    logits: (M, C); target y: (M, C) rows of weights (probabilities, a smoothed one-hot, or 0 for a
    row that is ignored); divisor: a 0-d tensor (the rows that count). Returns a scalar, or (M,).
    """
    row_losses = -(target * log_softmax_forward(logits, -1)).sum(-1)  # l_n = −Σ_k y_nk log yp_nk
    if reduction == "none":
        return row_losses
    total = row_losses.sum()  # Σ_n l_n
    return total / divisor if reduction == "mean" else total  # L = (1/N) Σ_n l_n


def cross_entropy_backward(
    grad_output: Tensor, logits: Tensor, target: Tensor, reduction: str, divisor: Tensor,
    needs_target_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """δlogits = (yp·Σ_k y_k − y)·s and δy = −log(yp)·s, with s = g/N ("mean"), g ("sum") or g_n per
    row ("none"): for rows y that sum to 1, the slide's (yp − y)/N · g. Shapes as in
    :func:`cross_entropy_forward`; δy is None unless ``needs_target_grad``."""
    if reduction == "none":
        scale = grad_output.unsqueeze(-1)  # s_n = g_n
    else:
        scale = grad_output / divisor if reduction == "mean" else grad_output  # s = g/N
    log_probs = log_softmax_forward(logits, -1)  # log yp
    grad_target = -log_probs * scale if needs_target_grad else None  # δy = −log(yp)·s
    grad_logits = log_probs.exp() * target.sum(-1, keepdim=True) - target  # yp·Σy − y
    return grad_logits * scale, grad_target  # δlogits = (yp·Σy − y)·s


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

    pred, target: the same shape ``(N, *)``. Returns a scalar.
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


class CrossEntropyFunction(LayerFunction):
    """Softmax cross-entropy against rows of target weights (smoothed, ignored rows 0), reduced by
    "mean" (over ``divisor`` rows), "sum" or "none", with backward (yp·Σy − y)·s."""

    @staticmethod
    def forward(logits, target, reduction, divisor):
        return cross_entropy_forward(logits, target, reduction, divisor)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, ctx.reduction, divisor = inputs
        ctx.save_for_backward(logits, target, divisor)
        ctx.save_for_forward(logits, target, divisor)

    @staticmethod
    def backward(ctx, grad_output):
        logits, target, divisor = ctx.saved_tensors
        grad_logits, grad_target = cross_entropy_backward(
            grad_output, logits, target, ctx.reduction, divisor, ctx.needs_input_grad[1]
        )
        return (grad_logits if ctx.needs_input_grad[0] else None), grad_target, None, None

    @staticmethod
    def jvp(ctx, logits_tangent, target_tangent, reduction_tangent, divisor_tangent):
        logits, target, divisor = ctx.saved_tensors
        ones = torch.ones(logits.shape[:-1], dtype=logits.dtype, device=logits.device)
        grads = cross_entropy_backward(ones, logits, target, "none", divisor, target_tangent is not None)
        row_tangents = sum((grad * tangent).sum(-1) for grad, tangent in zip(grads, (logits_tangent, target_tangent),
                                                                                strict=True) if tangent is not None)
        if ctx.reduction == "none":
            return row_tangents  # l̇_n = Σ_k ∂l_n/∂logits_nk · ḟ_nk (+ the target's)
        total = row_tangents.sum()
        return total / divisor if ctx.reduction == "mean" else total


@hand_writes(torch.nn.functional.cross_entropy)
def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Softmax cross-entropy like ``torch.nn.functional.cross_entropy``, with the hand-written
    backward (yp − y)/N: logits (C,), (N, C) or (N, C, d1, ...) with class indices (), (N,) or
    (N, d1, ...), or probabilities of the logits' shape; ``ignore_index`` (rows with that class
    index count for nothing, and not in N), ``label_smoothing`` ε (y = (1 − ε)·y + ε/C), reduction
    "mean", "sum" or "none" ((N, d1, ...) per position). Class ``weight`` and the legacy
    size_average / reduce are not supported (NotImplementedError).

    The common case (class indices, mean, no smoothing, nothing ignored) is
    :func:`softmax_cross_entropy`; otherwise the targets become (rows, C) weights (a one-hot,
    smoothed, 0 for an ignored row) for :class:`CrossEntropyFunction`.
    """
    function, arguments, positions = _cross_entropy_function_and_arguments(
        input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing)
    loss = apply(function, *arguments, autocast_to="float32")
    return loss.reshape(positions) if reduction == "none" else loss


def _cross_entropy_function_and_arguments(input, target, weight, size_average, ignore_index, reduce, reduction,
                                          label_smoothing):
    """:func:`cross_entropy`'s checks; the Function it applies, its arguments, and the shape of
    the per-position losses."""
    if weight is not None or size_average is not None or reduce is not None:
        raise NotImplementedError("cross_entropy: manualbp's cross-entropy has no class weights and no legacy "
                                  "size_average / reduce; use reduction= (and torch's for class weights)")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must lie in [0, 1], got {label_smoothing}")
    check_floating("cross_entropy", "input", input)
    logits, rows_target, positions = _cross_entropy_rows(input, target)
    if not rows_target.is_floating_point():
        kept = rows_target != ignore_index
        # The common case goes to the one-node formula, which has no ignored rows: only where that
        # can be seen without waiting for a device or reading a traced value (elsewhere a target
        # equal to ignore_index would reach it: the general path below handles every target).
        common = reduction == "mean" and not label_smoothing and input.dim() == 2
        if common and input.device.type == "cpu" and not is_traced(kept) and bool(kept.all()):
            return SoftmaxCrossEntropyFunction, (logits, _check_class_targets("cross_entropy", logits, rows_target)), \
                positions
        safe = torch.where(kept, rows_target, 0)  # an ignored row's index, any valid class (its weight is 0)
        _check_class_targets("cross_entropy", logits, safe)
        counts = kept.unsqueeze(-1).to(logits.dtype)  # 1 for a row that counts, 0 for an ignored one
        distribution = _target_distribution(safe.long(), logits) * counts  # one-hot, 0 if ignored
        divisor = kept.sum().to(logits.dtype)  # N: the rows that count
    else:
        _check_class_targets("cross_entropy", logits, rows_target)
        distribution, counts = rows_target, 1.0
        divisor = torch.tensor(float(logits.shape[0]), dtype=logits.dtype, device=logits.device)
    if label_smoothing:
        classes = logits.shape[-1]
        distribution = distribution * (1 - label_smoothing) + counts * (label_smoothing / classes)  # (1−ε)y + ε/C
    return CrossEntropyFunction, (logits, distribution, reduction, divisor), positions


def positions_as_rows(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """A sequence model's logits (B, T, C) and class targets (B, T) as B·T rows, (B·T, C) and
    (B·T,), the way a loss over (N, C) takes them (views); anything else as it is."""
    if outputs.dim() == 3 and targets.dim() == 2 and not targets.is_floating_point():
        return outputs.flatten(0, 1), targets.flatten()
    return outputs, targets


def _cross_entropy_rows(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Logits as (rows, C), targets as (rows,) indices or (rows, C) probabilities, and the shape of
    the per-position losses ((), (N,) or (N, d1, ...)): the class dimension moved last (views)."""
    if input.dim() == 0:
        raise ValueError("cross_entropy: expected logits of shape (C,), (N, C) or (N, C, d1, ...), got a scalar")
    if input.dim() == 1:  # one example: (C,) with a class index () or probabilities (C,)
        return input.unsqueeze(0), target.unsqueeze(0), ()
    classes = input.shape[1]
    positions = (input.shape[0], *input.shape[2:])
    logits = input.movedim(1, -1).reshape(-1, classes) if input.dim() > 2 else input
    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(f"cross_entropy: probability targets must have the logits' shape {tuple(input.shape)}, "
                             f"got {tuple(target.shape)}")
        return logits, (target.movedim(1, -1).reshape(-1, classes) if input.dim() > 2 else target), positions
    if tuple(target.shape) != positions:
        raise ValueError(f"cross_entropy: expected class targets of shape {positions} for logits of shape "
                         f"{tuple(input.shape)}, got {tuple(target.shape)}")
    return logits, target.reshape(-1), positions


class CrossEntropyLoss(torch.nn.CrossEntropyLoss, Loss, torch_twin=torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` (same settings: ignore_index, reduction, label_smoothing) with
    the hand-written backward of :func:`cross_entropy`. logits (N, C) or (N, C, d1, ...), targets
    class indices (N,) / (N, d1, ...) or probabilities -> a scalar, or per position for "none"."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
                             label_smoothing=self.label_smoothing)

    @classmethod
    def from_torch(cls, module: torch.nn.CrossEntropyLoss) -> CrossEntropyLoss:
        return share_state(module, cls)

    def to_torch(self) -> torch.nn.CrossEntropyLoss:
        return share_state(self, torch.nn.CrossEntropyLoss)

    def function_and_arguments(self, input: Tensor, target: Tensor):
        function, arguments, _ = _cross_entropy_function_and_arguments(
            input, target, self.weight, None, self.ignore_index, None, self.reduction, self.label_smoothing)
        return function, arguments

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(ignore_index=1, label_smoothing=0.1), (torch.randn(6, 4, dtype=dtype), torch.randint(0, 4, (6,)))


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

    pred, target: the same shape ``(N, *)``; no broadcasting. Returns a scalar.
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

    pred and target: the same shape ``(N, *)``. -> scalar.
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
