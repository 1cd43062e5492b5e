"""A character-level GPT of manualbp layers: nanoGPT's shape, every backward hand-written.

    idx (B, T) ─ token Embedding + position Embedding ─┐                      (embedding.py)
    x = x + Attention(LayerNorm(x))       ×n_layer     │  causal self-attention (multihead_attention.py)
    x = x + MLP(LayerNorm(x))                          │  Linear → GELU(tanh) → Linear
    logits = LayerNorm(x) Wᵀ                           ┘  W: the token embedding's weight (tied)

The residual adds and the position add are the only nodes whose backward is PyTorch's: an add
passes its gradient to both operands, which is no formula to write. ``manualbp.reference.to_torch``
gives the same model with torch.nn's layers (its torch.nn twin, sharing the weights); the loss is
the trainer's (``manualbp.nn.CrossEntropyLoss`` over (B·T, V)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from manualbp.layers.activations import GELU
from manualbp.layers.dropout import Dropout
from manualbp.layers.embedding import Embedding
from manualbp.layers.linear import Linear
from manualbp.layers.multihead_attention import MultiheadAttention
from manualbp.layers.normalization import LayerNorm

__all__ = ["GPT", "Block"]


class Block(torch.nn.Module):
    """x + Attention(LayerNorm(x)), then x + MLP(LayerNorm(x)); x (B, T, n_embd) -> same shape."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias=bias)
        self.attn = MultiheadAttention(n_embd, n_head, dropout=dropout, bias=bias, batch_first=True)
        self.ln_2 = LayerNorm(n_embd, bias=bias)
        self.mlp = torch.nn.Sequential(
            Linear(n_embd, 4 * n_embd, bias=bias), GELU(approximate="tanh"), Linear(4 * n_embd, n_embd, bias=bias),
            Dropout(dropout),
        )

    def forward(self, x: Tensor, causal_mask: Tensor) -> Tensor:
        h = self.ln_1(x)
        attended, _ = self.attn(h, h, h, attn_mask=causal_mask, need_weights=False, is_causal=True)
        x = x + attended  # the residual add
        return x + self.mlp(self.ln_2(x))

    def attention_weights(self, x: Tensor, causal_mask: Tensor) -> Tensor:
        """This block's attention weights per head for input x: (B, n_head, T, T)."""
        h = self.ln_1(x)
        return self.attn(h, h, h, attn_mask=causal_mask, need_weights=True, average_attn_weights=False)[1]


class GPT(torch.nn.Module):
    """A decoder-only transformer on token indices: idx (B, T) with T ≤ block_size -> logits
    (B, T, vocab_size). nanoGPT's model (token + position embeddings, pre-LayerNorm blocks of
    causal self-attention and a GELU MLP, a final LayerNorm, the LM head tied to the token
    embedding, its initialisation), built of manualbp layers. Defaults: nanoGPT's CPU settings for
    character-level Shakespeare (4 layers, 4 heads, width 128, context 64, no dropout, no biases)."""

    def __init__(self, vocab_size: int, block_size: int = 64, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
                 dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        if vocab_size is None:
            raise ValueError("GPT: vocab_size is None; give the number of distinct tokens (train() fills "
                             "model.net.vocab_size in from the data)")
        if vocab_size < 1 or block_size < 1 or n_layer < 1 or n_head < 1 or n_embd % n_head:
            raise ValueError(f"GPT: expected positive sizes with n_embd divisible by n_head, got vocab_size="
                             f"{vocab_size}, block_size={block_size}, n_layer={n_layer}, n_head={n_head}, "
                             f"n_embd={n_embd}")
        self.vocab_size, self.block_size = vocab_size, block_size
        self.token_embedding = Embedding(vocab_size, n_embd)
        self.position_embedding = Embedding(block_size, n_embd)
        self.dropout = Dropout(dropout)
        self.blocks = torch.nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.final_norm = LayerNorm(n_embd, bias=bias)
        self.lm_head = Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # weight tying: the two gradients add
        # True where query i may NOT see key j > i (torch.nn.MultiheadAttention's bool convention)
        mask = torch.ones(block_size, block_size, dtype=torch.bool).triu(1)
        self.register_buffer("causal_mask", mask, persistent=False)
        self.apply(_init_weights)
        for name, parameter in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("attn.out_proj.weight", "mlp.2.weight")):
                torch.nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def _embed(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        if idx.dim() != 2 or idx.shape[1] > self.block_size or idx.is_floating_point():
            raise ValueError(f"GPT: expected token indices of shape (B, T) with T ≤ block_size = {self.block_size}, "
                             f"got {tuple(idx.shape)} of {idx.dtype}")
        length = idx.shape[1]
        # (B, T), not (T,) broadcast over the batch: each sequence's own use of the position table, so that
        # manualbp.per_example can tell the sequences' terms apart (same values; a gather of B·T rows)
        positions = torch.arange(length, device=idx.device).expand(idx.shape[0], length)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))  # token + position
        return x, self.causal_mask[:length, :length]

    def forward(self, idx: Tensor) -> Tensor:
        x, mask = self._embed(idx)
        for block in self.blocks:
            x = block(x, mask)
        return self.lm_head(self.final_norm(x))  # logits (B, T, vocab_size)

    @torch.no_grad()
    def attention_weights(self, idx: Tensor, layer: int = 0) -> Tensor:
        """The attention weights of block ``layer`` for idx (B, T): (B, n_head, T, T), rows sum to 1."""
        x, mask = self._embed(idx)
        for block in self.blocks[:layer]:
            x = block(x, mask)
        return self.blocks[layer].attention_weights(x, mask)

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """idx (B, T) followed by ``max_new_tokens`` sampled tokens: (B, T + max_new_tokens). Each
        token is drawn from softmax(logits / temperature) over the last block_size tokens, from the
        ``top_k`` most likely only if given."""
        if not temperature > 0:
            raise ValueError(f"GPT.generate: temperature must be > 0, got {temperature}")
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.block_size:])[:, -1, :]
            # The largest logit subtracted first and float64 (a float32 of 1e-300 is 0): a tiny
            # temperature gives 0 and -inf (the most likely character), not inf - inf or 0 / 0 = NaN.
            logits = (logits - logits.max(dim=-1, keepdim=True).values).double() / temperature
            if top_k is not None:
                threshold = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < threshold, float("-inf"))
            next_token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, next_token], dim=1)
        return idx


def _init_weights(module: torch.nn.Module) -> None:
    """nanoGPT's initialisation: weights N(0, 0.02), biases 0; LayerNorm stays (1, 0)."""
    if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, torch.nn.MultiheadAttention):
        torch.nn.init.normal_(module.in_proj_weight, mean=0.0, std=0.02)
        if module.in_proj_bias is not None:
            torch.nn.init.zeros_(module.in_proj_bias)
