"""Embedding: a table lookup, the linear layer of a one-hot input.

Row n of the output is row i_n of the weight: Z = W[i], i.e. Z = onehot(i)·W. So the linear
layer's δW = XᵀδZ with X = onehot(i) is a scatter-add: each row of δZ is added to the row of δW
it was read from (repeated indices add up; the padding row gets none). The indices get no gradient.

Shapes: indices ``(*)`` integer, weight (V, D); output ``(*, D)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manualbp.errors import NotConvertibleError
from manualbp.layers.base import LayerFunction, apply, check_floating, hand_writes, is_traced, owns_buffers
from manualbp.layers.sharing import SharesState

__all__ = [
    "embedding_forward",
    "embedding_backward",
    "embedding_per_example",
    "EmbeddingFunction",
    "embedding",
    "Embedding",
]


def embedding_forward(indices: Tensor, weight: Tensor) -> Tensor:
    """Z = W[i]: indices ``(*)`` -> ``(*, D)``, one row of weight (V, D) per index. A new tensor, also for a
    0-d index (where ``W[i]`` is a view of W: a Function's output may be modified in place)."""
    rows = weight[indices]  # Z_n = W_(i_n)
    return rows.clone() if indices.dim() == 0 else rows


def embedding_backward(grad_output: Tensor, indices: Tensor, num_embeddings: int,
                       padding_idx: int | None = None) -> Tensor:
    """δW = onehot(i)ᵀ δZ: δW_v = Σ_{n: i_n = v} δZ_n; the padding row stays 0. Returns (V, D)."""
    rows = grad_output.reshape(indices.numel(), grad_output.shape[-1])
    grad_weight = grad_output.new_zeros(num_embeddings, grad_output.shape[-1])
    add = grad_weight.index_add_ if owns_buffers(grad_output) else grad_weight.index_add  # in place where ours
    grad_weight = add(0, indices.reshape(-1), rows)  # δW_v = Σ_{i_n = v} δZ_n
    if padding_idx is not None:
        grad_weight[padding_idx] = 0  # the padding row is not trained (torch.nn.Embedding's padding_idx)
    return grad_weight


def embedding_per_example(grad_output: Tensor, indices: Tensor, num_embeddings: int,
                          padding_idx: int | None = None) -> Tensor:
    """Each example's term of δW: δWₖ,ᵥ = Σ_{t: iₖₜ = v} δZₖₜ, the scatter-add of example k's rows alone.

    grad_output δZ: ``(N, *, D)``; indices: ``(N, *)``, the batch first (unbatched indices are one example).
    Returns (N, V, D); the padding row stays 0."""
    if indices.dim() == 0 or grad_output.dim() == 1:
        indices, grad_output = indices.reshape(1, -1), grad_output.reshape(1, -1, grad_output.shape[-1])
    batch, width = indices.shape[0], grad_output.shape[-1]
    offsets = torch.arange(batch, device=indices.device).mul_(num_embeddings).reshape(batch, *[1] * (indices.dim() - 1))
    grad_weight = grad_output.new_zeros(batch * num_embeddings, width)
    grad_weight.index_add_(0, (indices + offsets).reshape(-1), grad_output.reshape(-1, width))  # δWₖ,ᵥ = Σ δZₖₜ
    grad_weight = grad_weight.reshape(batch, num_embeddings, width)
    if padding_idx is not None:
        grad_weight[:, padding_idx] = 0  # the padding row is not trained
    return grad_weight


class EmbeddingFunction(LayerFunction):
    """Z = W[i] with backward δW = scatter-add of δZ's rows at i. Saves the indices only."""

    @staticmethod
    def forward(indices, weight, padding_idx):
        return embedding_forward(indices, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        indices, weight, ctx.padding_idx = inputs
        ctx.num_embeddings = weight.shape[0]
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)

    @staticmethod
    def backward(ctx, grad_output):
        (indices,) = ctx.saved_tensors
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = embedding_backward(grad_output, indices, ctx.num_embeddings, ctx.padding_idx)
        return None, grad_weight, None

    @staticmethod
    def jvp(ctx, indices_tangent, weight_tangent, padding_tangent):
        (indices,) = ctx.saved_tensors
        return embedding_forward(indices, weight_tangent)  # linear in W: Ż = Ẇ[i]

    @staticmethod
    def per_example(ctx, grad_output):
        (indices,) = ctx.saved_tensors
        return None, embedding_per_example(grad_output, indices, ctx.num_embeddings, ctx.padding_idx), None


def _padding_index(padding_idx: int | None, num_embeddings: int) -> int | None:
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"embedding: padding_idx must be within [-{num_embeddings}, {num_embeddings}) "
                         f"for {num_embeddings} embeddings, got {padding_idx}")
    return padding_idx % num_embeddings


@hand_writes(torch.nn.functional.embedding)
def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None, max_norm: float | None = None,
              norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """Rows of ``weight`` (V, D) at the integer ``input`` ``(*)``, like ``torch.nn.functional.embedding``:
    ``(*, D)``. ``padding_idx``: that row gets no gradient. ``max_norm``, ``scale_grad_by_freq`` and
    ``sparse`` are not supported (NotImplementedError)."""
    if max_norm is not None or scale_grad_by_freq or sparse:
        raise NotImplementedError(
            "embedding: manualbp's embedding has no max_norm, scale_grad_by_freq or sparse gradient; "
            "use torch.nn.functional.embedding for those"
        )
    if input.is_floating_point() or input.is_complex() or input.dtype == torch.bool:
        raise TypeError(f"embedding: expected integer indices (torch.long or torch.int), got dtype {input.dtype}; "
                        f"use input.long()")
    check_floating("embedding", "weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"embedding: expected a weight of shape (num_embeddings, embedding_dim), "
                         f"got shape {tuple(weight.shape)}")
    if input.numel() and input.device.type != "meta" and not is_traced(input):
        low, high = int(input.min()), int(input.max())
        if low < 0 or high >= weight.shape[0]:
            raise IndexError(f"embedding: indices must lie in [0, {weight.shape[0]}) for {weight.shape[0]} "
                             f"embeddings, got values from {low} to {high}")
    return apply(EmbeddingFunction, input, weight, _padding_index(padding_idx, weight.shape[0]))


class Embedding(SharesState, torch.nn.Embedding, torch_twin=torch.nn.Embedding):
    """``torch.nn.Embedding`` (same weight and state_dict) with the hand-written backward
    δW = scatter-add of δZ's rows at the indices. Tie it to an output Linear by giving both the same
    Parameter (``lm_head.weight = embedding.weight``): the two gradients add. input ``(*)`` -> ``(*, D)``."""

    def forward(self, input: Tensor) -> Tensor:
        return embedding(input, self.weight, self.padding_idx)

    def function_and_arguments(self, input: Tensor):
        return EmbeddingFunction, (input, self.weight, _padding_index(self.padding_idx, self.num_embeddings))

    @classmethod
    def check_convertible(cls, module: torch.nn.Module) -> None:
        if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
            raise NotConvertibleError(
                f"convert: manualbp's Embedding has no max_norm, scale_grad_by_freq or sparse gradient, "
                f"got {module!r}; build it without them or keep torch's"
            )

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(5, 4, padding_idx=0).to(dtype), (torch.tensor([[0, 1, 4], [3, 1, 1]]),)
