"""Which backward formulas a loss really runs: manualbp's hand-written ones, or PyTorch's.

``backward_coverage(loss)`` walks the autograd graph behind ``loss`` (any tensor that requires grad)
and sorts its nodes:

* hand-written: the backward of a manualbp Function (``LinearFunction``, ``AttentionFunction``, ...);
* structure: nodes whose backward moves or adds gradients without computing a derivative of
  their own -- views, reshapes, transposes, slicing, concatenation, copies and dtype casts; data
  movement (constant padding, roll, flip, indexing, gather, index_select, repeat, where,
  masked_fill, tril/triu: the forward only moves, selects or zeroes values); and the residual add
  (``AddBackward0``: a gradient passed to both operands). Anything that scales, sums or combines
  values (index_add, scatter_add, reflection padding, ...) is arithmetic;
* PyTorch's: every other node, an arithmetic op whose backward is PyTorch's formula.

The report counts the arithmetic nodes (hand-written + PyTorch's) and lists PyTorch's by type, so
it says what ``convert`` and ``hand_written()`` left::

    report = manualbp.backward_coverage(loss)
    print(report)          # 22 of 22 arithmetic backward nodes hand-written ...
    assert report.complete

From the command line, for a model factory (``python -m manualbp.coverage torchvision.models:resnet18``)
it prints the report for the model as built, after ``manualbp.convert`` (with the modules it left
and why), and after ``convert`` under ``manualbp.hand_written()``; for a model people download
(``python -m manualbp.coverage timm:convnext_atto``, ``python -m manualbp.coverage
transformers:LlamaConfig hidden_size=64``, built by :mod:`manualbp.zoo`) it also checks the loss and
every gradient of the last against the model as built, in float64: see ``manualbp/coverage/__main__.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

__all__ = ["CoverageReport", "backward_coverage", "STRUCTURE"]

# PyTorch's backward nodes that carry gradients without a derivative of their own (node type
# names without the trailing overload number: "ViewBackward0" is "ViewBackward"). Data movement is
# structure: a node whose forward only moves, copies, selects or zeroes values (its backward puts
# δ back where each value came from, adding the δ of a value used several times, as expand does).
# A node whose forward scales, sums or combines values is arithmetic, even when it looks like
# indexing: index_add, scatter_add, scatter_reduce, index_put (accumulate=True sums, and its node
# cannot be told from the plain one), reflection/replication padding (its edge values' δ are not a
# copy's) stay PyTorch's unless hand-written.
STRUCTURE = frozenset({
    "AddBackward",  # AddBackward0 only (tensor + tensor: the residual add); see _structural
    # views, reshapes, transposes, slicing, splitting
    "AliasBackward", "AsStridedBackward", "DiagonalBackward", "ExpandBackward", "NarrowBackward",
    "PermuteBackward", "ReshapeAliasBackward", "SelectBackward", "SliceBackward", "SplitBackward",
    "SplitWithSizesBackward", "SqueezeBackward", "TBackward", "TransposeBackward", "UnbindBackward",
    "UnfoldBackward", "UnsafeSplitBackward", "UnsafeViewBackward", "UnsqueezeBackward", "ViewBackward",
    # copies, casts, concatenation, repetition (repeat_interleave is index_select), pixel shuffles
    "CatBackward", "CloneBackward", "PixelShuffleBackward", "PixelUnshuffleBackward", "RepeatBackward",
    "StackBackward", "ToCopyBackward",
    # moving values: constant padding, roll, flip, indexing, gather, scatter of values (no reduce)
    "ConstantPadNdBackward", "FlipBackward", "GatherBackward", "IndexBackward", "IndexSelectBackward",
    "MaskedScatterBackward", "MaskedSelectBackward", "RollBackward", "ScatterBackward",
    # selecting by a condition that is not differentiated: where, masked_fill, tril/triu (zeros)
    "MaskedFillBackward", "TrilBackward", "TriuBackward", "WhereBackward",
})


@dataclass
class CoverageReport:
    """What a graph's backward runs. ``hand_written``: manualbp Function name -> node count;
    ``pytorch``: PyTorch's arithmetic node type -> count; ``structure``: the reshape/copy/add nodes."""

    hand_written: Counter = field(default_factory=Counter)
    pytorch: Counter = field(default_factory=Counter)
    structure: Counter = field(default_factory=Counter)

    @property
    def arithmetic(self) -> int:
        """Nodes that compute a derivative: hand-written ones and PyTorch's."""
        return sum(self.hand_written.values()) + sum(self.pytorch.values())

    @property
    def complete(self) -> bool:
        """True when no arithmetic node is left to PyTorch."""
        return not self.pytorch

    def __str__(self) -> str:
        written = sum(self.hand_written.values())
        lines = [f"{written} of {self.arithmetic} arithmetic backward nodes hand-written"
                 f" ({sum(self.structure.values())} structural nodes: views, copies, data movement such as"
                 " indexing, padding, where and masked_fill, residual adds)"]
        if self.hand_written:
            lines.append("  manualbp:  " + _counts(self.hand_written))
        if self.pytorch:
            lines.append("  PyTorch's: " + _counts(self.pytorch))
        return "\n".join(lines)


def _counts(counter: Counter) -> str:
    ordered = sorted(counter.items(), key=lambda item: (-item[1], item[0]))  # most frequent first
    return ", ".join(f"{name} ×{count}" for name, count in ordered)


def backward_coverage(*outputs: torch.Tensor) -> CoverageReport:
    """Walk the autograd graph behind ``outputs`` (a loss, or a model's outputs) and sort its
    nodes into hand-written, PyTorch's arithmetic and structure (see :mod:`manualbp.coverage`).
    Each node is counted once, however many paths reach it; leaves are not nodes."""
    for output in outputs:
        if not isinstance(output, torch.Tensor) or output.grad_fn is None:
            raise ValueError(
                "backward_coverage: expected tensors computed from something that requires grad (a loss, a "
                f"model's output), got {_describe(output)}; call it on the tensor you would call .backward() on"
            )
    report = CoverageReport()
    seen: set[int] = set()
    stack = [output.grad_fn for output in outputs]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(next_node for next_node, _ in node.next_functions)
        name = type(node).__name__
        if name == "AccumulateGrad":
            continue
        function = getattr(getattr(type(node), "_forward_cls", None), "manualbp_function", None)
        if function is not None:
            report.hand_written[function.__name__] += 1
        elif _structural(name):
            report.structure[name] += 1
        else:
            report.pytorch[name] += 1
    return report


def _structural(node_name: str) -> bool:
    if node_name == "AddBackward1":  # tensor + scalar·other, a scaled add: arithmetic
        return False
    return node_name.rstrip("0123456789") in STRUCTURE


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} with no grad_fn (requires_grad={value.requires_grad})"
    return f"a {type(value).__name__}"


def __getattr__(name: str):
    if name == "main":  # the command line's entry, python -m manualbp.coverage (manualbp/coverage/__main__.py)
        from manualbp.coverage.__main__ import main  # noqa: PLC0415 - only when asked: it imports the library

        return main
    raise AttributeError(f"module 'manualbp.coverage' has no attribute {name!r}")
