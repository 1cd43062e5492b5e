"""Models written the way their users write them, with torch.nn and torch.nn.functional only:
what manualbp.convert and manualbp.hand_written() are tested on (tests/test_transformers.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class NanoGPTLayerNorm(nn.Module):
    """nanoGPT's LayerNorm: an optional bias, and F.layer_norm called in forward."""

    def __init__(self, features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoGPTAttention(nn.Module):
    def __init__(self, width: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.c_attn = nn.Linear(width, 3 * width, bias=bias)
        self.c_proj = nn.Linear(width, width, bias=bias)
        self.heads = heads

    def forward(self, x):
        batch, length, width = x.size()
        q, k, v = self.c_attn(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(batch, length, width))


class NanoGPTBlock(nn.Module):
    def __init__(self, width: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.ln_1 = NanoGPTLayerNorm(width, bias)
        self.attn = NanoGPTAttention(width, heads, bias)
        self.ln_2 = NanoGPTLayerNorm(width, bias)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width, bias=bias), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * width, width, bias=bias), nn.Dropout(0.0))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """karpathy/nanoGPT's model.py, in short: token + position embeddings, pre-LayerNorm blocks of
    causal self-attention and a GELU MLP, a final LayerNorm, the LM head tied to the token
    embedding, and F.cross_entropy(..., ignore_index=-1) in forward."""

    def __init__(self, vocabulary=11, block_size=8, layers=2, heads=2, width=16, bias=True) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocabulary, width)
        self.wpe = nn.Embedding(block_size, width)
        self.drop = nn.Dropout(0.0)
        self.h = nn.ModuleList(NanoGPTBlock(width, heads, bias) for _ in range(layers))
        self.ln_f = NanoGPTLayerNorm(width, bias)
        self.lm_head = nn.Linear(width, vocabulary, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * layers))

    def forward(self, idx, targets):
        positions = torch.arange(idx.shape[1], dtype=torch.long, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def nanogpt_example(dtype=torch.float64):
    """A small NanoGPT and a batch (idx, targets), one target ignored (-1)."""
    torch.manual_seed(0)
    model = NanoGPT().to(dtype)
    idx = torch.randint(0, 11, (3, 8))
    targets = torch.randint(0, 11, (3, 8))
    targets[0, 0] = -1
    return model, (idx, targets)
