"""Scaled dot-product attention with a hand-written backward: the lecture's linear layer twice and
its softmax once.

For queries Q (L, E), keys K (S, E), values V (S, Ev) of one head (any leading dimensions: batch, heads):

    S = Q Kᵀ·s + M          (s = scale, 1/√E by default; M the additive mask: 0 keep, −∞ drop)
    P = softmax(S)          (per row, over the S keys)
    O = P V

Backward, from δO (L, Ev), one formula of the lecture per line:

    δV = Pᵀ δO                            (the linear layer's δW = XᵀδZ, X = P)
    δP = δO Vᵀ                            (its δX = δZ W)
    δS = P·(δP − rowsum(δP·P))            (the softmax backward, softmax.py)
    δQ = δS K·s,   δK = δSᵀ Q·s            (the linear layer again, for S = Q Kᵀ·s)
    δM = δS                               (summed over the dimensions M was broadcast along)

What is kept for backward: only the inputs. P (L × S per head, the largest tensor of a
transformer's forward) is recomputed in backward from Q and K: one more Q Kᵀ matmul and softmax
per step, in exchange for no (…, L, S) tensor held between forward and backward, which is what
PyTorch's CPU kernel keeps too (it saves the row log-sum-exp, (…, L)). The benchmark
(``python -m manualbp.bench --memory``) measures both.

Grouped-query attention (``enable_gqa=True``, as Llama, Qwen2, Mistral call it): H query heads
share Hkv key/value heads, each key/value head serving a group of G = H/Hkv query heads
(query head h reads key/value head h // G). The forward repeats K and V over each group; the
backward is the formula above per query head, then δK and δV summed over the G heads of a group
(a tensor used G times gets the sum of its G gradients, as the slides' δb sums δZ over the batch).

Dropout on the attention weights (``dropout_p`` = p > 0): a keep mask m (1 with probability 1 − p)
is drawn before the Function runs and saved for backward; with P̃ = P·m/(1 − p):

    O = P̃ V,   δV = P̃ᵀ δO,   δP = (δO Vᵀ)·m/(1 − p),   then δS from δP and P as above

The mask is drawn from torch's generator with ``bernoulli_`` (as ``torch.nn.functional.dropout``
draws its mask), so its values follow the same distribution as PyTorch's; PyTorch's own CPU
attention kernel draws its mask from a stream of its own, so the same seed gives a different mask
than ``F.scaled_dot_product_attention`` would (the tests compare distributions, and compare the
formulas to PyTorch's with the mask given to both).

A row whose keys are all masked (every M = −∞) attends to nothing: its output and gradients
are 0, as with PyTorch's CPU kernel (the softmax formula alone would give 0/0 = NaN).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from manualbp.layers.base import LayerFunction, apply, check_floating, hand_writes, owns_buffers
from manualbp.layers.matmul import sum_to_shape

__all__ = [
    "attention_forward",
    "repeat_over_groups",
    "sum_over_groups",
    "dropped_probabilities",
    "attention_backward",
    "attention_probabilities",
    "attention_probabilities_backward",
    "AttentionFunction",
    "scaled_dot_product_attention",
    "AttentionWeightsFunction",
    "attention_weights",
]


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


def attention_probabilities(query: Tensor, key: Tensor, mask: Tensor | None, scale: float,
                            causal: bool = False) -> Tensor:
    """P = softmax(Q Kᵀ·s + M) over the keys; rows with every key masked are 0.
    ``(*, L, E)``, ``(*, S, E)`` -> ``(*, L, S)``. ``causal``: M = −∞ above the diagonal (key j > query i),
    written into the scores in place."""
    scores = torch.matmul(query, key.transpose(-2, -1)).mul_(scale)  # S = Q Kᵀ·s (a fresh tensor: scaled in place)
    if causal:  # every row sees its own key at least: none is fully masked
        above = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu_(1)  # key j > query i
        return torch.softmax(scores.masked_fill_(above, float("-inf")), dim=-1)
    if mask is not None:
        scores = scores + mask  # + M
    probabilities = torch.softmax(scores, dim=-1)  # P = softmax(S)
    if mask is not None:
        attends_to_nothing = scores.amax(dim=-1, keepdim=True) == float("-inf")
        probabilities = torch.where(attends_to_nothing, 0, probabilities)  # 0, not 0/0, for a fully masked row
    return probabilities


def repeat_over_groups(tensor: Tensor, groups: int) -> Tensor:
    """Each key/value head repeated for the G query heads of its group: ``(*, Hkv, S, E)`` -> ``(*, Hkv·G, S, E)``,
    query head h reading head h // G (as ``repeat_interleave(G, dim=-3)``, PyTorch's ``enable_gqa``)."""
    if groups == 1:
        return tensor
    shape = tensor.shape
    return tensor.unsqueeze(-3).expand(*shape[:-2], groups, *shape[-2:]).reshape(
        *shape[:-3], shape[-3] * groups, *shape[-2:])


def sum_over_groups(grad: Tensor, groups: int) -> Tensor:
    """δK (or δV) of a key/value head: the sum of the δ of its G repeats, ``(*, Hkv·G, S, E)`` -> ``(*, Hkv, S, E)``."""
    if groups == 1:
        return grad
    shape = grad.shape
    return grad.reshape(*shape[:-3], shape[-3] // groups, groups, *shape[-2:]).sum(-3)  # δK = Σ_group δK_h


def dropped_probabilities(probabilities: Tensor, keep: Tensor | None, dropout_p: float) -> Tensor:
    """P̃ = P·m/(1 − p): the attention weights after dropout with the keep mask m (bool, broadcastable
    to P's ``(*, L, S)``); P itself when there is no mask."""
    if keep is None:
        return probabilities
    return probabilities * keep * (1 / (1 - dropout_p))  # P̃ = P·m/(1 − p)


def attention_forward(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float,
                      causal: bool = False, groups: int = 1, keep: Tensor | None = None,
                      dropout_p: float = 0.0) -> Tensor:
    """O = softmax(Q Kᵀ·s + M)·m/(1 − p) V. query ``(*, H, L, E)``, key ``(*, H/G, S, E)``, value ``(*, H/G, S, Ev)``
    (``groups`` G query heads per key/value head; G = 1: any leading dimensions, the same for all
    three), mask broadcastable to ``(*, H, L, S)`` or None, keep: the dropout keep mask (bool,
    ``(*, H, L, S)``) or None. Returns O: ``(*, H, L, Ev)``."""
    key, value = repeat_over_groups(key, groups), repeat_over_groups(value, groups)
    probabilities = attention_probabilities(query, key, mask, scale, causal)
    return torch.matmul(dropped_probabilities(probabilities, keep, dropout_p), value)  # O = P̃ V


def attention_backward(
    grad_output: Tensor,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    scale: float,
    needs_grad: tuple[bool, bool, bool, bool] = (True, True, True, False),
    causal: bool = False,
    groups: int = 1,
    keep: Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """δQ, δK, δV and δM (the scores' gradient, ``(*, H, L, S)``) of O = softmax(Q Kᵀ·s + M)·m/(1 − p) V;
    P is recomputed.

    grad_output δO: ``(*, H, L, Ev)``; the rest as in :func:`attention_forward` (δK, δV at key's and
    value's shapes, summed over each group of query heads). Each result is None unless
    ``needs_grad`` asks for it (δM is returned at the scores' shape, unreduced).
    """
    key, value = repeat_over_groups(key, groups), repeat_over_groups(value, groups)
    probabilities = attention_probabilities(query, key, mask, scale, causal)  # P, recomputed
    grad_value = None
    if needs_grad[2]:
        dropped = dropped_probabilities(probabilities, keep, dropout_p)
        grad_value = sum_over_groups(torch.matmul(dropped.transpose(-2, -1), grad_output), groups)  # δV = P̃ᵀ δO
    if not (needs_grad[0] or needs_grad[1] or needs_grad[3]):
        return None, None, grad_value, None
    grad_probabilities = torch.matmul(grad_output, value.transpose(-2, -1))  # δP̃ = δO Vᵀ
    if keep is not None:
        grad_probabilities = grad_probabilities * keep * (1 / (1 - dropout_p))  # δP = δP̃·m/(1 − p)
    grad_query, grad_key, grad_scores = attention_probabilities_backward(
        grad_probabilities, probabilities, query, key, scale, (needs_grad[0], needs_grad[1], needs_grad[3]),
        grad_probabilities_is_ours=True,
    )
    if grad_key is not None:
        grad_key = sum_over_groups(grad_key, groups)
    return grad_query, grad_key, grad_value, grad_scores


def attention_probabilities_backward(
    grad_probabilities: Tensor,
    probabilities: Tensor,
    query: Tensor,
    key: Tensor,
    scale: float,
    needs_grad: tuple[bool, bool, bool] = (True, True, False),
    grad_probabilities_is_ours: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """δQ, δK and δM (= δS, at the scores' shape ``(*, L, S)``) of P = softmax(Q Kᵀ·s + M), from δP.

    grad_probabilities δP, probabilities P: ``(*, L, S)``; query ``(*, L, E)``, key ``(*, S, E)``. Each result is
    None unless ``needs_grad`` asks for it. ``grad_probabilities_is_ours``: δP is a buffer the caller
    made, which δS may be written over (where :func:`owns_buffers` allows)."""
    if grad_probabilities_is_ours and owns_buffers(grad_probabilities):  # δS written over δP
        product = grad_probabilities * probabilities
        row_sums = product.sum(dim=-1, keepdim=True)  # rowsum(δP·P)
        del product
        grad_scores = grad_probabilities.sub_(row_sums).mul_(probabilities)  # δS = P·(δP − rowsum(δP·P))
    else:
        row_sums = (grad_probabilities * probabilities).sum(dim=-1, keepdim=True)  # rowsum(δP·P)
        grad_scores = probabilities * (grad_probabilities - row_sums)  # δS = P·(δP − rowsum(δP·P))
    grad_query = torch.matmul(grad_scores, key) * scale if needs_grad[0] else None  # δQ = δS K·s
    grad_key = torch.matmul(grad_scores.transpose(-2, -1), query) * scale if needs_grad[1] else None  # δK = δSᵀ Q·s
    return grad_query, grad_key, (grad_scores if needs_grad[2] else None)


def _probabilities_tangent(probabilities, query, key, scale, query_tangent, key_tangent, mask_tangent):
    """Ṗ = P·(Ṡ − rowsum(Ṡ·P)), Ṡ = (Q̇ Kᵀ + Q K̇ᵀ)·s + Ṁ (forward mode); None if no tangent."""
    scores_tangent = 0
    if query_tangent is not None:
        scores_tangent = scores_tangent + torch.matmul(query_tangent, key.transpose(-2, -1)) * scale
    if key_tangent is not None:
        scores_tangent = scores_tangent + torch.matmul(query, key_tangent.transpose(-2, -1)) * scale
    if mask_tangent is not None:
        scores_tangent = scores_tangent + mask_tangent
    if not isinstance(scores_tangent, Tensor):
        return None
    row_sums = (scores_tangent * probabilities).sum(dim=-1, keepdim=True)
    return probabilities * (scores_tangent - row_sums)


def _attention_tangent(query, key, value, mask, scale, causal, tangents, groups=1, keep=None, dropout_p=0.0):
    """Ȯ = Ṗ̃ V + P̃ V̇, Ṗ̃ = Ṗ·m/(1 − p) (forward mode)."""
    query_tangent, key_tangent, value_tangent, mask_tangent = tangents
    key, value = repeat_over_groups(key, groups), repeat_over_groups(value, groups)
    if key_tangent is not None:
        key_tangent = repeat_over_groups(key_tangent, groups)
    probabilities = attention_probabilities(query, key, mask, scale, causal)
    output_tangent = 0
    probabilities_tangent = _probabilities_tangent(probabilities, query, key, scale, query_tangent, key_tangent,
                                                   mask_tangent)
    if probabilities_tangent is not None:
        output_tangent = torch.matmul(dropped_probabilities(probabilities_tangent, keep, dropout_p), value)
    if value_tangent is not None:
        output_tangent = output_tangent + torch.matmul(dropped_probabilities(probabilities, keep, dropout_p),
                                                       repeat_over_groups(value_tangent, groups))
    return output_tangent


# ----------------------------------------------------------------------------------------------
# The Function and the public function
# ----------------------------------------------------------------------------------------------


class AttentionFunction(LayerFunction):
    """O = softmax(Q Kᵀ·s + M)·m/(1 − p) V with the hand-written backward; saves Q, K, V, M and the
    dropout keep mask m only (P is recomputed). ``groups``: query heads per key/value head."""

    @staticmethod
    def forward(query, key, value, mask, scale, causal, groups=1, keep=None, dropout_p=0.0):
        return attention_forward(query, key, value, mask, scale, causal, groups, keep, dropout_p)

    @staticmethod
    def setup_context(ctx, inputs, output):
        query, key, value, mask, ctx.scale, ctx.causal, ctx.groups, keep, ctx.dropout_p = inputs
        ctx.save_for_backward(query, key, value, mask, keep)
        ctx.save_for_forward(query, key, value, mask, keep)

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, mask, keep = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        grad_query, grad_key, grad_value, grad_scores = attention_backward(
            grad_output, query, key, value, mask, ctx.scale, needs, ctx.causal, ctx.groups, keep, ctx.dropout_p
        )
        grad_mask = sum_to_shape(grad_scores, mask.shape) if grad_scores is not None else None  # δM = Σ δS
        return grad_query, grad_key, grad_value, grad_mask, None, None, None, None, None

    @staticmethod
    def jvp(ctx, query_tangent, key_tangent, value_tangent, mask_tangent, scale_tangent, causal_tangent,
            groups_tangent, keep_tangent, dropout_p_tangent):
        query, key, value, mask, keep = ctx.saved_tensors
        return _attention_tangent(query, key, value, mask, ctx.scale, ctx.causal,
                                  (query_tangent, key_tangent, value_tangent, mask_tangent),
                                  ctx.groups, keep, ctx.dropout_p)


class AttentionWeightsFunction(LayerFunction):
    """P = softmax(Q Kᵀ·s + M) with the hand-written backward δS = P·(δP − rowsum(δP·P)), δQ = δS K·s,
    δK = δSᵀ Q·s, δM = δS; saves Q, K, M and its output P."""

    @staticmethod
    def forward(query, key, mask, scale, causal):
        return attention_probabilities(query, key, mask, scale, causal)

    @staticmethod
    def setup_context(ctx, inputs, output):
        query, key, mask, ctx.scale, _ = inputs
        ctx.save_for_backward(query, key, mask, output)
        ctx.save_for_forward(query, key, mask, output)

    @staticmethod
    def backward(ctx, grad_probabilities):
        query, key, mask, probabilities = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_query, grad_key, grad_scores = attention_probabilities_backward(
            grad_probabilities, probabilities, query, key, ctx.scale, (needs[0], needs[1], needs[2])
        )
        grad_mask = sum_to_shape(grad_scores, mask.shape) if grad_scores is not None else None  # δM = Σ δS
        return grad_query, grad_key, grad_mask, None, None

    @staticmethod
    def jvp(ctx, query_tangent, key_tangent, mask_tangent, scale_tangent, causal_tangent):
        query, key, mask, probabilities = ctx.saved_tensors
        tangent = _probabilities_tangent(probabilities, query, key, ctx.scale, query_tangent, key_tangent, mask_tangent)
        return torch.zeros_like(probabilities) if tangent is None else tangent


def attention_weights(query: Tensor, key: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False,
                      scale: float | None = None) -> Tensor:
    """P = softmax(Q Kᵀ·scale + M) over the keys, with the hand-written backward: the attention
    weights on their own, for when they are needed (``MultiheadAttention(need_weights=True)``,
    dropout on them, a picture). query ``(*, L, E)``, key ``(*, S, E)`` -> ``(*, L, S)``; masks as in
    :func:`scaled_dot_product_attention`. A fully masked row is 0."""
    mask = _additive_mask(attn_mask, is_causal, query.dtype)
    _check_attention_arguments(query, key, key[..., :1], mask, "attention_weights")
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    return apply(AttentionWeightsFunction, query, key, mask, scale, is_causal, autocast_to="lower")


def _additive_mask(attn_mask: Tensor | None, is_causal: bool, dtype: torch.dtype) -> Tensor | None:
    """M, additive: a float mask as given; a bool mask (True = attend) as 0 / −∞. None for
    is_causal (the Function writes −∞ above the diagonal itself)."""
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: give attn_mask or is_causal=True, not both "
                         "(PyTorch refuses the pair too); fold the causal mask into attn_mask")
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(
            ~attn_mask, float("-inf"))  # M = 0 where True, −∞ where False
    if not attn_mask.is_floating_point():
        raise TypeError(f"scaled_dot_product_attention: expected attn_mask of dtype bool or {dtype}, "
                        f"got {attn_mask.dtype}")
    return attn_mask


def _check_attention_arguments(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None,
                               function: str = "scaled_dot_product_attention", grouped: bool = False) -> None:
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        check_floating(function, name, tensor)
        if tensor.dim() < 2:
            raise ValueError(f"{function}: expected {name} of shape (*, length, features), "
                             f"got {tuple(tensor.shape)}")
    if grouped:
        _check_groups(query, key, value)
    elif not (query.shape[:-2] == key.shape[:-2] == value.shape[:-2]):
        # broadcasting batch dimensions is left to PyTorch's kernel (the mode falls back to it)
        raise NotImplementedError(
            f"{function}: expected query, key and value with the same leading dimensions, "
            f"got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"{function}: expected query (*, L, E), key (*, S, E), value (*, S, Ev), got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if mask is not None:
        scores = (*query.shape[:-1], key.shape[-2])
        try:
            torch.broadcast_shapes(mask.shape, scores)
        except RuntimeError:
            raise ValueError(f"{function}: expected attn_mask broadcastable to the scores' "
                             f"shape {scores}, got {tuple(mask.shape)}") from None


def _check_groups(query: Tensor, key: Tensor, value: Tensor) -> None:
    """enable_gqa: query ``(*, H, L, E)``, key and value ``(*, Hkv, S, ·)``, H a multiple of Hkv."""
    shapes = f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
    if query.dim() < 3 or not (query.dim() == key.dim() == value.dim()):
        raise NotImplementedError("scaled_dot_product_attention: expected query, key and value of shape "
                                  f"(*, heads, length, features) with enable_gqa=True, got {shapes}")
    if key.shape[-3] != value.shape[-3] or query.shape[-3] % key.shape[-3]:
        raise ValueError("scaled_dot_product_attention: with enable_gqa=True expected the query heads "
                         f"(dimension -3) to be a multiple of the key and value heads, got {shapes}")
    if not (query.shape[:-3] == key.shape[:-3] == value.shape[:-3]):
        raise NotImplementedError("scaled_dot_product_attention: expected query, key and value with the same "
                                  f"batch dimensions, got {shapes}")


@hand_writes(torch.nn.functional.scaled_dot_product_attention)
def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """softmax(Q Kᵀ·scale + M) V like ``torch.nn.functional.scaled_dot_product_attention``, with the
    hand-written backward. query ``(*, L, E)``, key ``(*, S, E)``, value ``(*, S, Ev)`` -> ``(*, L, Ev)``.

    attn_mask: bool (True = attend) or float (added to the scores), broadcastable to ``(*, L, S)``;
    is_causal: query i sees keys j ≤ i. enable_gqa: key and value ``(*, Hkv, S, ·)`` shared by groups of
    H/Hkv query heads ``(*, H, L, E)``. dropout_p: dropout on the attention weights, the keep mask drawn
    from torch's generator (same distribution as PyTorch's, not the same draws: see the module).
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"scaled_dot_product_attention: expected 0 <= dropout_p < 1, got {dropout_p!r}")
    mask = _additive_mask(attn_mask, is_causal, query.dtype)
    _check_attention_arguments(query, key, value, mask, grouped=enable_gqa)
    groups = query.shape[-3] // key.shape[-3] if enable_gqa else 1
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    keep = None
    if dropout_p > 0:
        scores_shape = (*query.shape[:-1], key.shape[-2])
        keep = torch.empty(scores_shape, dtype=query.dtype, device=query.device).bernoulli_(1 - dropout_p).bool()
    return apply(AttentionFunction, query, key, value, mask, scale, is_causal, groups, keep, float(dropout_p),
                 autocast_to="lower")
