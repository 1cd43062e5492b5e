"""The lecture's layers as ``torch.autograd.Function``s whose backward passes are written by hand.

Every layer comes in three parts, in the order a reader meets them on the slides:

* ``<layer>_forward`` and ``<layer>_backward``: the formulas themselves, as plain tensor functions
  (like CS231n's ``affine_forward`` / ``affine_backward``). They are the only implementation of
  each formula: the autograd Functions below call them, and so does the explicit backprop loop in
  :mod:`manualbp.manual`, which runs the same code with no autograd engine at all.
* ``<Layer>Function``: the ``torch.autograd.Function`` that plugs the pair into autograd. It saves
  only inputs and outputs (so double backward stays exact), skips gradients nobody asked for
  (``ctx.needs_input_grad``), and has a ``jvp`` for forward-mode AD and ``torch.func``.
* ``<layer>(...)``: the public function (``linear``, ``relu``, ...). It checks the input, applies
  autocast the way PyTorch's own op would, and applies the Function (through a copy of it made
  for plain eager mode or for torch.compile, see ``_function``).

Layout: torch stores a Linear weight as ``(out_features, in_features)`` and computes Z = X Wᵀ + b.
The slides store W as ``(in, out)`` and write Z = X W + b; their δW = XᵀδZ and δX = δZ Wᵀ are, in
torch's layout, δW = δZᵀX and δX = δZ W -- the same numbers, transposed.

For elementwise layers the Jacobian is diagonal, so the backward formula (δX = f'(X)·δZ) also
pushes a tangent forward (Ẋ ↦ f'(X)·Ẋ): their ``jvp`` calls the same ``<layer>_backward``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

__all__ = [
    "linear",
    "sigmoid",
    "relu",
    "elu",
    "linear_relu",
    "softmax_cross_entropy",
    "softmax_euclidean_loss",
    "euclidean_loss",
    "linear_forward",
    "linear_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "relu_forward",
    "relu_backward",
    "elu_forward",
    "elu_backward",
    "log_softmax",
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "softmax_euclidean_forward",
    "softmax_euclidean_backward",
    "euclidean_loss_forward",
    "euclidean_loss_backward",
    "REDUCTIONS",
]

REDUCTIONS = ("sum", "mean")


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


def linear_forward(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Z = X Wᵀ + b.

    input: (*, in_features); weight: (out_features, in_features); bias: (out_features,) or None.
    Returns Z: (*, out_features).
    """
    if input.dim() == 2 and bias is not None:
        return torch.addmm(bias, input, weight.t())  # Z = X Wᵀ + b, in one GEMM
    # Any other rank: matmul folds the leading dimensions and returns a fresh tensor (not a view,
    # which autograd would forbid modifying in place, e.g. by a following ReLU(inplace=True)).
    output = input @ weight.t()  # Z = X Wᵀ
    return output if bias is None else output + bias  # ... + b


def linear_backward(
    grad_output: Tensor,
    input: Tensor | None,
    weight: Tensor,
    needs_grad: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """δX, δW, δb of Z = X Wᵀ + b, each computed only if ``needs_grad`` asks for it.

    grad_output δZ: (*, out_features); input X: (*, in_features) (may be None if δW is not
    needed); weight W: (out_features, in_features).
    Returns δX: (*, in_features), δW: (out_features, in_features), δb: (out_features,).
    """
    out_features, in_features = weight.shape
    grad_rows = grad_output.reshape(-1, out_features)
    grad_input = grad_weight = grad_bias = None
    if needs_grad[0]:
        grad_input = grad_output @ weight  # δX = δZ·W   (slides, W as (in, out): δZ Wᵀ)
    if needs_grad[1]:
        grad_weight = grad_rows.t() @ input.reshape(-1, in_features)  # δW = δZᵀX   (slides: XᵀδZ)
    if needs_grad[2]:
        grad_bias = grad_rows.sum(0)  # δb = Σ_k δZ_k,:
    return grad_input, grad_weight, grad_bias


def sigmoid_forward(input: Tensor) -> Tensor:
    """σ(a) = 1/(1 + e^(−a)), elementwise; any shape.

    Finite for every a: for a ≪ 0, e^(−a) overflows to inf and 1/(1+inf) is exactly 0.
    """
    return 1 / (1 + torch.exp(-input))  # σ(a) = 1/(1+e^(−a))


def sigmoid_backward(grad_output: Tensor, output: Tensor) -> Tensor:
    """δA = σ(A)(1 − σ(A))·δZ, from the saved output Z = σ(A); same shape as grad_output."""
    return output * (1 - output) * grad_output  # δA = σ(1−σ)·δZ


def relu_forward(input: Tensor) -> Tensor:
    """max(0, x), elementwise; any shape."""
    return input.clamp_min(0)  # Z = max(0, X)


def relu_backward(grad_output: Tensor, output: Tensor) -> Tensor:
    """δX = 1[X > 0]·δZ, from the saved output Z = max(0, X); same shape.

    Z ≥ 0, so sign(Z) is exactly 1[X > 0] (1 where X > 0, else 0): one fast elementwise product
    (several times faster on CPU than building a boolean mask).
    """
    return grad_output * output.sign()  # δX = 1[X>0]·δZ


def elu_forward(input: Tensor, alpha: float = 1.0) -> Tensor:
    """x if x > 0 else α(eˣ − 1), elementwise; any shape."""
    return torch.where(input > 0, input, alpha * torch.expm1(input))  # Z = X if X>0 else α(e^X − 1)


def elu_backward(grad_output: Tensor, input: Tensor, output: Tensor, alpha: float = 1.0) -> Tensor:
    """δX = δZ·(1 if X > 0 else Z + α): for X ≤ 0, d/dx α(eˣ − 1) = αeˣ = Z + α; same shape."""
    return torch.where(input > 0, grad_output, grad_output * (output + alpha))  # δX = δZ·(1 | Z+α)


def log_softmax(logits: Tensor) -> Tensor:
    """log yp_k = logits_k − log Σ_j exp(logits_j), over the last dimension (stable for any size)."""
    return torch.log_softmax(logits, dim=-1)  # log yp = logits − log Σ exp(logits)


def _target_distribution(target: Tensor, num_classes: int) -> Tensor:
    """Targets as probabilities y: (N, C). Class indices (N,) become one-hot rows."""
    if target.is_floating_point():
        return target
    return torch.nn.functional.one_hot(target, num_classes)


def softmax_cross_entropy_forward(logits: Tensor, target: Tensor) -> Tensor:
    """L = −(1/N) Σ_n Σ_k y_nk log yp_nk with yp = softmax(logits).

    logits: (N, C); target: class indices (N,) or probabilities / one-hot rows (N, C).
    Returns the scalar mean loss over the batch.
    """
    log_probs = log_softmax(logits)
    if target.is_floating_point():
        return -(target * log_probs).sum() / logits.shape[0]  # L = −(1/N) Σ_n Σ_k y_nk log yp_nk
    return -log_probs.gather(1, target.unsqueeze(1)).mean()  # L = −(1/N) Σ_n log yp_n,target


def softmax_cross_entropy_backward(
    grad_output: Tensor, logits: Tensor, target: Tensor, needs_target_grad: bool = False
) -> tuple[Tensor, Tensor | None]:
    """δlogits = (yp − y)/N · g and, for probability targets that need it, δy = −log(yp)/N · g.

    (For soft targets whose rows do not sum to 1, δlogits = (yp·Σ_k y_k − y)/N · g.)

    grad_output g: scalar; logits: (N, C); target: (N,) indices or (N, C) probabilities.
    Returns δlogits: (N, C) and δy: (N, C) or None.
    """
    scale = grad_output / logits.shape[0]
    probs = torch.softmax(logits, dim=-1)  # yp = exp(logits) / Σ exp(logits)
    target_rows = _target_distribution(target, logits.shape[1])
    if target.is_floating_point():  # rows need not sum to 1 (F.cross_entropy allows it): Σ_k y_k ≠ 1
        probs = probs * target_rows.sum(dim=-1, keepdim=True)  # yp·Σy, = yp for the slide's y
    grad_logits = (probs - target_rows) * scale  # (yp − y)/N · g
    grad_target = -log_softmax(logits) * scale if needs_target_grad else None  # δy = −log(yp)/N · g
    return grad_logits, grad_target


def softmax_euclidean_forward(logits: Tensor, target: Tensor) -> Tensor:
    """L = (1/N) Σ_n ½‖yp_n − y_n‖² with yp = softmax(logits): the lecture's question "what if we
    used the L2 loss with softmax?". logits: (N, C); target: indices (N,) or probabilities (N, C).
    Returns a scalar (a mean over the batch, like softmax_cross_entropy)."""
    probs = torch.softmax(logits, dim=-1)  # yp = softmax(logits)
    difference = probs - _target_distribution(target, logits.shape[-1])
    return 0.5 * (difference**2).sum() / logits.shape[0]  # L = (1/N) Σ ½‖yp − y‖²


def softmax_euclidean_backward(
    grad_output: Tensor, logits: Tensor, target: Tensor, needs_target_grad: bool = False
) -> tuple[Tensor, Tensor | None]:
    """δlogits = (diag(yp) − yp ypᵀ)·(yp − y)/N · g: the Euclidean loss's δYp pushed back through
    the softmax Jacobian (∂yp_k/∂logits_i = yp_i(1[i=k] − yp_k)). For probability targets that
    need it, δy = −(yp − y)/N · g. Shapes: logits (N, C) -> δlogits (N, C), δy (N, C) or None."""
    probs = torch.softmax(logits, dim=-1)  # yp = softmax(logits)
    grad_probs = (probs - _target_distribution(target, logits.shape[-1])) * (grad_output / logits.shape[0])  # δyp = (yp − y)/N · g
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
# The autograd Functions
# ----------------------------------------------------------------------------------------------


def _linear_tangent(input, weight, input_tangent, weight_tangent, bias_tangent) -> Tensor:
    """Forward-mode derivative of Z = X Wᵀ + b: Ż = Ẋ Wᵀ + X Ẇᵀ + ḃ (missing tangents are 0)."""
    tangent = 0
    if input_tangent is not None:
        tangent = tangent + linear_forward(input_tangent, weight)  # Ẋ Wᵀ
    if weight_tangent is not None:
        tangent = tangent + linear_forward(input, weight_tangent)  # X Ẇᵀ
    if bias_tangent is not None:
        tangent = tangent + bias_tangent  # ḃ
    return tangent


def _loss_tangent(grads, tangents) -> Tensor:
    """Forward-mode derivative of a scalar loss: L̇ = Σ_inputs Σ (∂L/∂input)·(input tangent),
    with ∂L/∂input the backward formula evaluated at g = 1 (missing tangents count as 0)."""
    return sum((grad * tangent).sum() for grad, tangent in zip(grads, tangents) if tangent is not None)


class LinearFunction(Function):
    """Z = X Wᵀ + b with the hand-written backward δX = δZ W, δW = δZᵀX, δb = Σ δZ."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias):
        return linear_forward(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        # δX needs W, δW needs X: keep X only when W wants a gradient.
        ctx.save_for_backward(input if ctx.needs_input_grad[1] else None, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        return linear_backward(grad_output, input, weight, ctx.needs_input_grad)

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent):
        input, weight = ctx.saved_tensors
        return _linear_tangent(input, weight, input_tangent, weight_tangent, bias_tangent)


class SigmoidFunction(Function):
    """σ(a) = 1/(1+e^(−a)) with backward σ(1−σ)·δZ from the saved output."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input):
        return sigmoid_forward(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return sigmoid_backward(grad_output, output)

    @staticmethod
    def jvp(ctx, input_tangent):
        (output,) = ctx.saved_tensors
        return sigmoid_backward(input_tangent, output)


class ReLUFunction(Function):
    """max(0, x) with backward 1[x>0]·δZ from the saved output."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input):
        return relu_forward(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return relu_backward(grad_output, output)

    @staticmethod
    def jvp(ctx, input_tangent):
        (output,) = ctx.saved_tensors
        return relu_backward(input_tangent, output)


class ELUFunction(Function):
    """x if x>0 else α(eˣ−1), with backward δZ·(1 if x>0 else y+α)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, alpha):
        return elu_forward(input, alpha)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, alpha = inputs
        ctx.alpha = alpha
        ctx.save_for_backward(input, output)
        ctx.save_for_forward(input, output)

    @staticmethod
    def backward(ctx, grad_output):
        input, output = ctx.saved_tensors
        return elu_backward(grad_output, input, output, ctx.alpha), None

    @staticmethod
    def jvp(ctx, input_tangent, alpha_tangent):
        input, output = ctx.saved_tensors
        return elu_backward(input_tangent, input, output, ctx.alpha)


class LinearReLUFunction(Function):
    """One layer of the slides' MNIST net in one node: Z = f(X Wᵀ + b) with f = ReLU.

    Backward, as on the MNIST slide: δA = f'(A)·δZ, then δX = δA W, δW = δAᵀX, δb = Σ δA -- the
    same ``relu_backward`` and ``linear_backward`` as the separate layers, with no intermediate
    saved: f'(A) is read off the saved output (Z > 0 exactly where A > 0).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias):
        return relu_forward(linear_forward(input, weight, bias))

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        ctx.save_for_backward(input if ctx.needs_input_grad[1] else None, weight, output)
        ctx.save_for_forward(input, weight, output)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, output = ctx.saved_tensors
        grad_preactivation = relu_backward(grad_output, output)  # δA = f'(A)·δZ
        return linear_backward(grad_preactivation, input, weight, ctx.needs_input_grad)

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent):
        input, weight, output = ctx.saved_tensors
        tangent = _linear_tangent(input, weight, input_tangent, weight_tangent, bias_tangent)
        return relu_backward(tangent, output)  # Ż = f'(A)·Ȧ


class SoftmaxCrossEntropyFunction(Function):
    """Mean softmax cross-entropy with backward (yp − y)/N · g."""

    generate_vmap_rule = True

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


class SoftmaxEuclideanFunction(Function):
    """Mean ½‖softmax(logits) − y‖² with backward (diag(yp) − yp ypᵀ)(yp − y)/N · g."""

    generate_vmap_rule = True

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


class EuclideanLossFunction(Function):
    """½‖Yp − Y‖² (sum, or divided by N) with backward (Yp − Y)·g."""

    generate_vmap_rule = True

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


# Which class a public function applies. The Functions above are written in the separate
# forward / setup_context style, which torch.func needs. Two copies of each, made from the same
# methods, cover the cases where that style costs or breaks:
# * plain eager autograd (training): for setup_context-style Functions, every ``apply`` binds its
#   arguments with ``inspect.signature`` (torch.autograd.function._bind_default_args), about 45 µs
#   per layer per step on a 2-core CPU, more than a whole small layer. The eager copy enters
#   through the classic ``forward(ctx, *args)``, which runs the same forward and setup_context.
# * torch.compile: Dynamo refuses any Function that defines ``jvp`` ("Unsupported custom jvp"),
#   and forward-mode AD does not run inside a compiled graph, so the compile copy has none.


def _eager_entry(function: type[Function]) -> type[Function]:
    """``function`` entered through the classic ``forward(ctx, *args)``: same forward,
    setup_context, backward and jvp, without the per-call signature binding."""

    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    methods = {"forward": staticmethod(forward), "backward": staticmethod(function.backward)}
    return type(function.__name__, (Function,), methods | {"jvp": staticmethod(function.jvp)})


def _without_jvp(function: type[Function]) -> type[Function]:
    """``function`` minus its ``jvp``, for torch.compile."""
    return type(function.__name__, (function,), {"jvp": staticmethod(Function.jvp)})


_FUNCTIONS = {
    "linear": LinearFunction,
    "sigmoid": SigmoidFunction,
    "relu": ReLUFunction,
    "elu": ELUFunction,
    "linear_relu": LinearReLUFunction,
    "softmax_cross_entropy": SoftmaxCrossEntropyFunction,
    "softmax_euclidean_loss": SoftmaxEuclideanFunction,
    "euclidean_loss": EuclideanLossFunction,
}
_EAGER_FUNCTIONS = {name: _eager_entry(function) for name, function in _FUNCTIONS.items()}
_FUNCTIONS_FOR_COMPILE = {name: _without_jvp(function) for name, function in _FUNCTIONS.items()}


def _function(name: str) -> type[Function]:
    if torch.compiler.is_compiling():
        return _FUNCTIONS_FOR_COMPILE[name]
    if torch._C._are_functorch_transforms_active():  # vmap, grad, jacrev, jvp of torch.func
        return _FUNCTIONS[name]
    return _EAGER_FUNCTIONS[name]


# ----------------------------------------------------------------------------------------------
# The public functions: check the input, apply autocast, call the Function
# ----------------------------------------------------------------------------------------------


def _apply(name: str, *args, autocast_to: str | None = None):
    """Apply the Function called ``name`` the way PyTorch runs its own op under autocast.

    ``torch.amp.custom_fwd`` does not work with the separate ``setup_context`` style
    (pytorch/pytorch#132388), so the cast happens here, outside the Function: floating-point
    tensors are cast to the autocast dtype (``autocast_to="lower"``, for matmuls) or to float32
    (``"float32"``, for losses), and the Function then runs with autocast off, so forward and
    backward see one dtype. The casts are ordinary autograd ops, so gradients reach float32
    parameters in float32. As in PyTorch, float64 tensors are left as they are. Outside autocast
    this is just ``function.apply(*args)``.
    """
    function = _function(name)
    device_type = args[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return function.apply(*args)
    if autocast_to is not None:
        dtype = torch.get_autocast_dtype(device_type) if autocast_to == "lower" else torch.float32
        args = tuple(arg.to(dtype) if _autocast_eligible(arg) else arg for arg in args)
    with torch.autocast(device_type, enabled=False):
        return function.apply(*args)


def _autocast_eligible(arg) -> bool:
    """Autocast casts float32, float16 and bfloat16 tensors, never float64 (as PyTorch does)."""
    return isinstance(arg, Tensor) and arg.dtype in (torch.float32, torch.float16, torch.bfloat16)


def _is_traced(tensor: Tensor) -> bool:
    """True under torch.compile or a torch.func transform, where values can't be read."""
    if torch.compiler.is_compiling():
        return True
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(is_wrapped and is_wrapped(tensor))


def _check_floating(name: str, argument: str, tensor: Tensor) -> None:
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point {argument}, got dtype {tensor.dtype}; "
            f"convert it first, e.g. {argument}.float()"
        )


def _check_linear_arguments(input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if (  # the common case, checked in a few cheap comparisons (this runs every layer, every step)
        input.dtype == weight.dtype
        and input.is_floating_point()
        and weight.dim() == 2
        and input.shape[-1:] == weight.shape[1:]
        and (bias is None or (bias.shape == weight.shape[:1] and bias.dtype == weight.dtype))
    ):
        return
    _check_floating("linear", "input", input)
    if weight.dim() != 2:
        raise ValueError(
            f"linear: expected a weight of shape (out_features, in_features), "
            f"got shape {tuple(weight.shape)}"
        )
    out_features, in_features = weight.shape
    if input.dim() == 0:
        raise ValueError(
            f"linear: expected an input of shape (*, {in_features}), got a 0-d tensor (a scalar); "
            f"give it a feature dimension, e.g. input.reshape(1, 1) for in_features=1"
        )
    if input.shape[-1] != in_features:
        got = input.shape[-1]
        raise ValueError(
            f"linear: expected {in_features} input features, got {got} "
            f"(input shape {tuple(input.shape)}, weight shape {tuple(weight.shape)}); the last "
            f"dimension of the input must equal in_features -- flatten or reshape the input, "
            f"or build the layer with in_features={got}"
        )
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(
            f"linear: expected a bias of shape ({out_features},), got {tuple(bias.shape)}"
        )
    if not torch.is_autocast_enabled(input.device.type):
        for argument, tensor in (("weight", weight), ("bias", bias)):
            if tensor is not None and tensor.dtype != input.dtype:
                raise TypeError(
                    f"linear: input is {input.dtype} but {argument} is {tensor.dtype}; use one "
                    f"dtype for both, e.g. model.to({input.dtype}) or input.to({tensor.dtype})"
                )


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Z = X Wᵀ + b, like ``torch.nn.functional.linear``, with the hand-written backward.

    input: (*, in_features), floating point; weight: (out_features, in_features);
    bias: (out_features,) or None. Returns (*, out_features).
    Under autocast it runs in the autocast dtype (bfloat16 on CPU), like ``F.linear``.
    """
    _check_linear_arguments(input, weight, bias)
    return _apply("linear", input, weight, bias, autocast_to="lower")


def linear_relu(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """max(0, X Wᵀ + b) in one autograd node (the slides' Z = f(XW + b), f = ReLU).

    Equal to ``relu(linear(input, weight, bias))`` in values and gradients, faster and lighter.
    Shapes as for :func:`linear`.
    """
    _check_linear_arguments(input, weight, bias)
    return _apply("linear_relu", input, weight, bias, autocast_to="lower")


def sigmoid(input: Tensor) -> Tensor:
    """σ(a) = 1/(1 + e^(−a)) elementwise, like ``torch.sigmoid``; any shape, floating point."""
    _check_floating("sigmoid", "input", input)
    return _apply("sigmoid", input)


def relu(input: Tensor) -> Tensor:
    """max(0, x) elementwise, like ``torch.nn.functional.relu``; any shape, floating point."""
    _check_floating("relu", "input", input)
    return _apply("relu", input)


def elu(input: Tensor, alpha: float = 1.0) -> Tensor:
    """x if x > 0 else α(eˣ − 1) elementwise, like ``torch.nn.functional.elu``; any shape."""
    _check_floating("elu", "input", input)
    return _apply("elu", input, float(alpha))


def _check_class_targets(name: str, logits: Tensor, target: Tensor) -> Tensor:
    """Check logits (N, C) and targets; return the targets, class indices as int64."""
    if logits.dim() != 2:
        raise ValueError(
            f"{name}: expected logits of shape (N, C), got {tuple(logits.shape)}; "
            f"for a single example use logits.unsqueeze(0)"
        )
    batch_size, num_classes = logits.shape
    _check_floating(name, "logits", logits)
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
    if batch_size and not _is_traced(target):
        low, high = (value.item() for value in torch.aminmax(target))
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name}: class targets must lie in [0, {num_classes}) for "
                f"{num_classes} classes, got values from {low} to {high}; check the labels, or "
                f"give the last layer as many outputs as there are classes"
            )
    return target.long()  # gather and one_hot take int64 indices


def softmax_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of −Σ_k y_k log softmax(logits)_k, like ``F.cross_entropy``.

    logits: (N, C); target: class indices (N,) in [0, C), or probabilities / one-hot rows (N, C).
    Returns a scalar. Under autocast it runs in float32, like ``F.cross_entropy``.
    """
    target = _check_class_targets("softmax_cross_entropy", logits, target)
    return _apply("softmax_cross_entropy", logits, target, autocast_to="float32")


def softmax_euclidean_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of ½‖softmax(logits) − y‖²: softmax with the L2 loss instead of
    cross-entropy (the lecture's open question).

    logits: (N, C); target: class indices (N,) in [0, C), or probabilities / one-hot rows (N, C).
    Returns a scalar; under autocast it runs in float32.
    """
    target = _check_class_targets("softmax_euclidean_loss", logits, target)
    return _apply("softmax_euclidean_loss", logits, target, autocast_to="float32")


def euclidean_loss(pred: Tensor, target: Tensor, reduction: str = "sum") -> Tensor:
    """½‖Yp − Y‖², the slides' Euclidean loss; ``reduction="mean"`` divides by the batch size N.

    pred, target: the same shape (N, *); no broadcasting. Returns a scalar.
    (``"mean"`` is per example, not per element as in ``torch.nn.MSELoss``.)
    """
    target = _check_euclidean_arguments(pred, target, reduction)
    return _apply("euclidean_loss", pred, target, reduction, autocast_to="float32")


def _check_euclidean_arguments(pred: Tensor, target: Tensor, reduction: str) -> Tensor:
    """Check the arguments of euclidean_loss; return the target in pred's dtype (under autocast
    both are cast to float32 by ``_apply`` instead, so the target is not rounded first)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"euclidean_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    _check_floating("euclidean_loss", "pred", pred)
    if pred.shape != target.shape:
        raise ValueError(
            f"euclidean_loss: pred and target must have the same shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}; reshape one of them (no broadcasting is done, so that "
            f"(N, 1) against (N,) cannot silently become (N, N))"
        )
    if torch.is_autocast_enabled(pred.device.type) and target.is_floating_point():
        return target
    return target.to(pred.dtype)
