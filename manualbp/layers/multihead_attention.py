"""Multi-head attention: nothing new to differentiate, only layers already written by hand.

For inputs of length L (queries) and S (keys and values), batch N, width E = H heads × d:

    Q = X_q W_qᵀ + b_q,  K = X_k W_kᵀ + b_k,  V = X_v W_vᵀ + b_v      (linear.py, three times)
    Q, K, V split into H heads of width d                               (views)
    O_h = softmax(Q_h K_hᵀ/√d + M) V_h                                  (attention.py)
    Y = concat_h(O_h) W_oᵀ + b_o                                        (linear.py)

The mask M merges ``attn_mask`` ((L, S) or (N·H, L, S); bool True = may NOT attend, as in
torch.nn.MultiheadAttention, or float, added) and ``key_padding_mask`` ((N, S); True = padding).
With ``need_weights=True``, or dropout on the attention weights in training, the weights P are
made on their own (``attention_weights``), dropped out (``dropout``) and multiplied into V
(``matmul``); otherwise one ``scaled_dot_product_attention`` node does it without keeping P.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manualbp.errors import NotConvertibleError
from manualbp.layers.attention import attention_weights, scaled_dot_product_attention
from manualbp.layers.base import hand_writes
from manualbp.layers.dropout import dropout
from manualbp.layers.linear import linear
from manualbp.layers.matmul import matmul
from manualbp.layers.sharing import SharesState

__all__ = ["multi_head_attention_forward", "MultiheadAttention"]


@hand_writes(torch.nn.functional.multi_head_attention_forward)
def multi_head_attention_forward(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    bias_k: Tensor | None,
    bias_v: Tensor | None,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    training: bool = True,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: Tensor | None = None,
    k_proj_weight: Tensor | None = None,
    v_proj_weight: Tensor | None = None,
    static_k: Tensor | None = None,
    static_v: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``torch.nn.functional.multi_head_attention_forward`` from manualbp's layers (its signature;
    time first): query (L, N, E) or (L, E), key (S, N, E_k), value (S, N, E_v) -> output (L, N, E)
    and, with ``need_weights``, the attention weights (N, L, S) averaged over the heads, or
    (N, H, L, S). ``bias_k``/``bias_v`` (add_bias_kv), ``add_zero_attn`` and ``static_k``/``static_v``
    are not supported (NotImplementedError; ``manualbp.hand_written()`` then runs PyTorch's)."""
    _check_supported(bias_k, bias_v, add_zero_attn, static_k, static_v, is_causal, attn_mask)
    batched = query.dim() == 3
    if not batched:  # one sequence: (L, E) -> (L, 1, E)
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(0).flatten(0, 1)
    query, key, value = _swap_first_two(query, key, value)  # (L, N, E) -> (N, L, E): views
    output, weights = batch_first_attention(
        query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, out_proj_weight,
        out_proj_bias, dropout_p if training else 0.0, key_padding_mask, need_weights, attn_mask,
        (q_proj_weight, k_proj_weight, v_proj_weight) if use_separate_proj_weight else None, is_causal,
    )
    output = output.transpose(0, 1)  # (L, N, E)
    if not batched:
        output = output.squeeze(1)
    if not need_weights:
        return output, None
    weights = weights.mean(dim=1) if average_attn_weights else weights
    return output, (weights if batched else weights.squeeze(0))


def batch_first_attention(query, key, value, width, num_heads, in_proj_weight, in_proj_bias, out_proj_weight,
                          out_proj_bias, dropout_p, key_padding_mask, need_weights, attn_mask, separate_weights,
                          is_causal) -> tuple[Tensor, Tensor | None]:
    """The attention itself, batch first: query (N, L, E), key (N, S, E_k), value (N, S, E_v) ->
    output (N, L, E) and, if ``need_weights``, P per head (N, H, L, S). ``dropout_p``: on P (0 when
    not training); ``separate_weights``: (W_q, W_k, W_v) when the inputs differ in width, else None."""
    batch, length, embed = query.shape
    if embed != width or width % num_heads:
        raise ValueError(f"multi_head_attention_forward: expected queries of width {width}, divisible "
                         f"by {num_heads} heads, got {tuple(query.shape)}")
    head_width = width // num_heads
    queries, keys, values = _in_projection(query, key, value, in_proj_weight, in_proj_bias, separate_weights)

    def heads(x: Tensor) -> Tensor:  # (N, T, E) -> (N, H, T, d): views
        return x.unflatten(-1, (num_heads, head_width)).transpose(1, 2)

    queries, keys, values = heads(queries), heads(keys), heads(values)
    mask = _merged_mask(attn_mask, key_padding_mask, batch, num_heads, length, keys.shape[2], queries.dtype)
    weights = None
    if need_weights or dropout_p > 0:
        weights = attention_weights(queries, keys, mask)  # P = softmax(Q Kᵀ/√d + M)
        weights = dropout(weights, dropout_p)
        output = matmul(weights, values)  # O = P V
    elif is_causal and key_padding_mask is None:  # attn_mask is the causal mask (the hint): no mask tensor, as torch
        output = scaled_dot_product_attention(queries, keys, values, is_causal=True)  # O = softmax(Q Kᵀ/√d + M) V
    else:
        output = scaled_dot_product_attention(queries, keys, values, mask)  # O = softmax(Q Kᵀ/√d + M) V
    output = output.transpose(1, 2).reshape(batch, length, width)  # concat_h O_h: (N, L, E)
    return linear(output, out_proj_weight, out_proj_bias), weights  # Y = O W_oᵀ + b_o


def _swap_first_two(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each of query, key, value with its first two dimensions swapped (views), keeping which of
    them are the same tensor (self-attention projects a shared input once)."""
    swapped_query = query.transpose(0, 1)
    swapped_key = swapped_query if key is query else key.transpose(0, 1)
    swapped_value = swapped_key if value is key else swapped_query if value is query else value.transpose(0, 1)
    return swapped_query, swapped_key, swapped_value


def _check_supported(bias_k, bias_v, add_zero_attn, static_k, static_v, is_causal, attn_mask) -> None:
    if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None or static_v is not None:
        raise NotImplementedError(
            "multi_head_attention_forward: manualbp's attention has no add_bias_kv, add_zero_attn or static keys; "
            "build torch.nn.MultiheadAttention without them, or keep PyTorch's"
        )
    if is_causal and attn_mask is None:
        raise RuntimeError("multi_head_attention_forward: is_causal is a hint that attn_mask is the causal mask; "
                           "give attn_mask too (torch.nn.Transformer.generate_square_subsequent_mask(L))")


def _in_projection(query, key, value, in_proj_weight, in_proj_bias, separate_weights):
    """Q, K, V = X W_qᵀ + b_q, ...: one linear node for self-attention's packed weight (3E, E),
    as PyTorch does, else one per input."""
    width = query.shape[-1]
    biases = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
    if separate_weights is not None:
        return tuple(linear(x, w, b) for x, w, b in zip((query, key, value), separate_weights, biases, strict=True))
    if query is key and key is value:  # self-attention: one GEMM, as PyTorch's _in_projection_packed
        return linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    weights = in_proj_weight.split(width)
    return tuple(linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases, strict=True))


def _merged_mask(attn_mask, key_padding_mask, batch, num_heads, length, keys, dtype) -> Tensor | None:
    """One additive mask (N or 1, H or 1, L, S): 0 where a query may attend, −inf (a bool True) or
    the given float where it may not."""
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
        if mask.dim() == 3:  # (N·H, L, S)
            mask = mask.reshape(batch, num_heads, length, keys)
        elif mask.dim() != 2:
            raise ValueError(f"multi_head_attention_forward: expected attn_mask of shape (L, S) or (N·H, L, S), "
                             f"got {tuple(attn_mask.shape)}")
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (batch, keys):
            raise ValueError(f"multi_head_attention_forward: expected key_padding_mask of shape ({batch}, {keys}), "
                             f"got {tuple(key_padding_mask.shape)}")
        padding = _additive(key_padding_mask, dtype).reshape(batch, 1, 1, keys)
        mask = padding if mask is None else mask + padding
    return mask


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:  # True: may not attend (torch.nn.MultiheadAttention's convention)
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"multi_head_attention_forward: expected a bool or float mask, got {mask.dtype}")
    return mask.to(dtype)


class MultiheadAttention(SharesState, torch.nn.MultiheadAttention, torch_twin=torch.nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` (same parameters, out_proj, state_dict, batch_first) whose
    forward is :func:`multi_head_attention_forward`: linear, attention and linear nodes with
    hand-written backwards. query (N, L, E) if batch_first else (L, N, E) -> (output, weights)."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if not (self.batch_first and query.dim() == 3):
            return multi_head_attention_forward(
                query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
                self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, self.out_proj.weight, self.out_proj.bias,
                training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
                attn_mask=attn_mask, use_separate_proj_weight=not self._qkv_same_embed_dim,
                q_proj_weight=self.q_proj_weight, k_proj_weight=self.k_proj_weight, v_proj_weight=self.v_proj_weight,
                average_attn_weights=average_attn_weights, is_causal=is_causal,
            )
        # batch first: (N, L, E) as it is (torch's forward transposes to time first and back)
        _check_supported(self.bias_k, self.bias_v, self.add_zero_attn, None, None, is_causal, attn_mask)
        separate = None if self._qkv_same_embed_dim else (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        output, weights = batch_first_attention(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
            self.out_proj.weight, self.out_proj.bias, self.dropout if self.training else 0.0, key_padding_mask,
            need_weights, attn_mask, separate, is_causal,
        )
        if need_weights and average_attn_weights:
            weights = weights.mean(dim=1)
        return output, weights

    @classmethod
    def check_convertible(cls, module: torch.nn.MultiheadAttention) -> None:
        if module.bias_k is not None or module.add_zero_attn:
            raise NotConvertibleError(
                f"convert: manualbp's MultiheadAttention has no add_bias_kv or add_zero_attn, got {module!r}; "
                f"build it without them or keep torch's"
            )

    @classmethod
    def from_torch(cls, module: torch.nn.MultiheadAttention) -> MultiheadAttention:
        twin = super().from_torch(module)
        twin._modules = dict(module._modules)  # out_proj: the same Linear, read by forward through its weight
        return twin

    def to_torch(self) -> torch.nn.MultiheadAttention:
        twin = super().to_torch()
        twin._modules = dict(self._modules)
        return twin

    runs_in_manual_engine = False

    def function_and_arguments(self, *inputs: Tensor):
        raise NotImplementedError("MultiheadAttention is several nodes (linear, attention, linear); the manual "
                                  "engine runs sequential nets of single-node layers")

    @classmethod
    def example(cls, dtype=torch.float64):
        layer = cls(8, 2, batch_first=True).to(dtype)
        x = torch.randn(3, 5, 8, dtype=dtype)
        return layer, (x, x, x)
