"""Per-example gradients, their norms and clipping, from the same hand-written backward.

The slides' δW = XᵀδZ is a sum over the batch: δW = Σₖ xₖᵀ δzₖ. Its terms -- one gradient per
example -- are what differentially private training (DP-SGD), per-example clipping and
gradient-noise estimates need. Each manualbp Function with parameters writes its term next to its
batch formula (``linear_per_example`` beside ``linear_backward``, ``conv2d_per_example`` beside
``conv2d_backward``) and says so with a ``per_example`` method on the Function; this module runs
those methods during an ordinary ``loss.backward()``::

    with manualbp.per_example(model):
        loss = criterion(model(x), y)       # the forward may also run before the block
        loss.backward()
    model.fc.weight.grad_sample             # (N, *weight.shape); .sum(0) == weight.grad

``grad_sample[k]`` is example k's term of ``p.grad`` (BackPACK's convention): for a mean loss each
term is that example's own gradient divided by N. Tied weights (a GPT's embedding and head) get
the sum of both uses, per example.

``per_example(model, norms_only=True)`` leaves ``p.grad_norm_sample`` (N,) instead: the norm of
each term, computed without materialising the terms where a layer knows how ("ghost norms": for a
linear layer on rows, ‖δWₖ‖ = ‖xₖ‖·‖δzₖ‖). :func:`clipped_gradients` uses them for DP-SGD's
per-example clipping in two backward passes.

Every layer's input must hold the batch in its first dimension (as with ``batch_first=True``).
Batch norm mixes the examples of a batch, so it has no per-example gradient: it is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from manualbp.errors import PerExampleError
from manualbp.layers.base import PER_EXAMPLE

__all__ = ["per_example", "PerExampleSession", "PerExampleError", "per_example_norms", "clipped_gradients"]


class PerExampleSession:
    """The state of one ``with manualbp.per_example(model):`` block (see :mod:`manualbp.per_example_gradients`)."""

    def __init__(self, parameters: Iterable[Tensor], norms_only: bool = False) -> None:
        self.parameters = {id(p): p for p in parameters if p.requires_grad}
        self.names = {}  # id -> a name for messages, filled by per_example() from named_parameters
        self.norms_only = norms_only
        self.tied: set[int] = set()  # parameters a model holds in more than one place (filled by per_example())
        self.missing: dict[int, str] = {}  # parameter id -> the node that reached it without a rule
        self.batch_size: int | None = None
        self._grad_before: dict[int, Tensor | None] = {}
        # book-keeping (clipped_gradients): each node's batch weight gradient is put off until the norms, hence
        # the clipping factors, are known; then it is the same batch formula on the scaled δZ (one GEMM)
        self.defer_weight_gradients = False
        self.deferred: list[tuple] = []  # (function, ctx, grad_outputs, {input index: parameter})
        self.batch_sums: dict[int, Tensor] = {}  # parameter id -> Σ of the batch gradients manualbp's nodes gave it

    # -- the block ---------------------------------------------------------------------------
    def __enter__(self) -> PerExampleSession:
        if PER_EXAMPLE.session is not None:
            raise RuntimeError("manualbp.per_example: blocks do not nest; leave the outer block first")
        for parameter in self.parameters.values():
            for attribute in ("grad_sample", "grad_norm_sample"):
                if hasattr(parameter, attribute):
                    delattr(parameter, attribute)
            self._grad_before[id(parameter)] = None if parameter.grad is None else parameter.grad.clone()
        PER_EXAMPLE.session = self
        return self

    def __exit__(self, kind, error, traceback) -> None:
        PER_EXAMPLE.session = None
        if kind is None:
            self._check_complete()

    # -- what the Functions' eager backward calls ----------------------------------------------
    def record(self, function, ctx, grad_outputs: tuple) -> list[tuple[int, Tensor]]:
        """One node's backward is about to run: add its per-example terms to the parameters it reaches.
        Returns those parameters with their input index, for :meth:`add_batch_gradients`."""
        # next_functions has an entry per tensor input only, None for those that need no gradient: in
        # order, its other entries are the inputs that need one
        wanting = [index for index, needed in enumerate(ctx.needs_input_grad) if needed]
        nodes = [node for node, _ in ctx.next_functions if node is not None]
        targets = [(index, parameter) for index, node in zip(wanting, nodes, strict=True)
                   if (parameter := self._tracked_parameter(node)) is not None]
        if not targets:
            return targets
        # the norms of a tied parameter's terms do not add: its terms are materialised and summed first
        materialise = not self.norms_only or any(id(parameter) in self.tied for _, parameter in targets)
        rule = getattr(function, "per_example" if materialise else "per_example_norms", None)
        if rule is None and not materialise:
            rule, materialise = getattr(function, "per_example", None), True
        if rule is None:
            for _, parameter in targets:
                self.missing[id(parameter)] = function.__name__
            return []
        terms = rule(ctx, *grad_outputs)
        for index, parameter in targets:
            term = terms[index]
            if term is None:
                self.missing[id(parameter)] = function.__name__
                continue
            if self.norms_only and materialise and id(parameter) not in self.tied:
                term = term.flatten(1).square().sum(1)  # ‖δθₖ‖², from the materialised term
            self._add(parameter, term, function.__name__)
        if self.defer_weight_gradients:  # this backward computes δX only; δW waits for the clipping factors
            self.deferred.append((function, ctx, grad_outputs, dict(targets), ctx.needs_input_grad))
            parameters = {index for index, _ in targets}
            ctx.needs_input_grad = tuple(n and i not in parameters for i, n in enumerate(ctx.needs_input_grad))
            return []
        return targets

    def add_batch_gradients(self, targets: list[tuple[int, Tensor]], grads) -> None:
        """The batch gradients the node's backward returned for the parameters it reached: their sum over
        the nodes must be each parameter's whole gradient at the end (else some of it came from PyTorch's
        own backward, whose terms are missing). A (P,)-sized sum, not a pass over the (N, P) terms."""
        if not targets:
            return
        grads = grads if isinstance(grads, tuple) else (grads,)
        for index, parameter in targets:
            grad = grads[index]
            if grad is not None:
                key = id(parameter)
                self.batch_sums[key] = grad.detach() if key not in self.batch_sums else self.batch_sums[key] + grad

    def add_scaled_gradients(self, scale: Tensor) -> None:
        """Σₖ scaleₖ·δθₖ into each parameter's ``.grad``, from the nodes whose batch weight gradient was put
        off (``defer_weight_gradients``): each node's own batch backward on δZ scaled example by example,
        since δθ = Σₖ δθₖ is linear in δZ and δθₖ depends on δZₖ alone."""
        for function, ctx, grad_outputs, parameters, needs in self.deferred:
            ctx.needs_input_grad = tuple(needs[i] and i in parameters for i in range(len(needs)))
            first = grad_outputs[0]
            scaled = first * scale.reshape(-1, *[1] * (first.dim() - 1))  # cₖ·δZₖ
            with torch.no_grad():
                grads = function.backward(ctx, scaled, *grad_outputs[1:])
            grads = grads if isinstance(grads, tuple) else (grads,)
            for index, parameter in parameters.items():
                grad = grads[index]
                parameter.grad = grad if parameter.grad is None else parameter.grad + grad  # Σₖ cₖ δθₖ
        self.deferred.clear()

    def _tracked_parameter(self, node) -> Tensor | None:
        variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf it accumulates into
        if variable is not None and id(variable) in self.parameters:
            return variable
        return None

    def _add(self, parameter: Tensor, term: Tensor, function_name: str) -> None:
        batch_size = term.shape[0]
        if self.batch_size is None:
            self.batch_size = batch_size
        elif batch_size != self.batch_size:
            raise PerExampleError(
                f"manualbp.per_example: {function_name} saw a batch of {batch_size} examples where the layers before "
                f"it saw {self.batch_size}; every layer's input must hold the batch in its first dimension "
                f"(build attention with batch_first=True)")
        attribute = "grad_norm_sample" if self.norms_only else "grad_sample"
        previous = getattr(parameter, attribute, None)
        if self.norms_only and id(parameter) in self.tied:  # its terms, summed; their norms at the end
            parameter.grad_norm_parts = [term.detach() + (parameter.grad_norm_parts[0] if hasattr(
                parameter, "grad_norm_parts") else 0)]
            return
        if self.norms_only:
            # squared norms of a parameter used twice add only when the uses' terms are orthogonal: keep
            # them apart and combine at the end (see _check_complete)
            parameter.grad_norm_parts = getattr(parameter, "grad_norm_parts", []) + [term]
            return
        setattr(parameter, attribute, term.detach() if previous is None else previous + term.detach())

    def _check_complete(self) -> None:
        problems = []
        for key, parameter in self.parameters.items():
            name = self.names.get(key, f"a parameter of shape {tuple(parameter.shape)}")
            if key in self.missing:
                problems.append(f"{name} (reached by {self.missing[key]}, which has no per-example rule)")
                continue
            changed = parameter.grad is not None and (
                self._grad_before[key] is None or not torch.equal(parameter.grad, self._grad_before[key]))
            if self.norms_only:
                parts = getattr(parameter, "grad_norm_parts", None)
                if parts is not None:
                    del parameter.grad_norm_parts
                    if len(parts) > 1:
                        problems.append(f"{name} (used {len(parts)} times: tie it by holding it in two modules, "
                                        f"as a GPT's head and embedding do, or use per_example(model))")
                        continue
                    if key in self.tied:
                        parameter.grad_norm_sample = parts[0].flatten(1).norm(dim=1)  # ‖Σ uses' δθₖ‖
                    else:
                        parameter.grad_norm_sample = parts[0].clamp_min(0).sqrt()  # ‖δθₖ‖
                elif changed:
                    problems.append(f"{name} (its gradient came from PyTorch's own backward)")
                continue
            sample = getattr(parameter, "grad_sample", None)
            if sample is None:
                if changed:
                    problems.append(f"{name} (its gradient came from PyTorch's own backward)")
                continue
            if changed:
                added = parameter.grad if self._grad_before[key] is None else parameter.grad - self._grad_before[key]
                total = self.batch_sums.get(key, torch.zeros_like(added))
                if not torch.allclose(total, added, rtol=1e-3, atol=1e-6 * (1 + float(added.abs().max()))):
                    problems.append(f"{name} (part of its gradient came from PyTorch's own backward)")
        if problems:
            raise PerExampleError(
                "manualbp.per_example: no per-example gradient for " + "; ".join(problems) +
                ". Convert the model (manualbp.convert) and run its forward under manualbp.hand_written(), so that "
                "every parameter is used by a manualbp layer")


def per_example(model: torch.nn.Module | Iterable[Tensor], norms_only: bool = False) -> PerExampleSession:
    """``with manualbp.per_example(model): loss.backward()`` leaves, on every parameter of ``model``
    that the backward reaches, ``p.grad`` as usual and ``p.grad_sample``: ``(N, *p.shape)``, example k's
    term of ``p.grad`` (``grad_sample.sum(0) == p.grad``). With ``norms_only=True`` it leaves
    ``p.grad_norm_sample``: (N,), the norm of each term, without materialising the terms where the
    layer can (see :mod:`manualbp.per_example_gradients`). ``model``: a Module, or an iterable of parameters."""
    if isinstance(model, torch.nn.Module):
        named = list(model.named_parameters())
        session = PerExampleSession((p for _, p in named), norms_only=norms_only)
        session.names = {id(p): name for name, p in named}
        places = [id(p) for _, p in model.named_parameters(remove_duplicate=False)]
        session.tied = {key for key in places if places.count(key) > 1}  # a GPT's embedding and head
        return session
    return PerExampleSession(model, norms_only=norms_only)


def per_example_norms(model: torch.nn.Module, *, from_attribute: str = "grad_norm_sample") -> Tensor:
    """The norm of each example's whole gradient, (N,): √(Σ_p ‖δθₖ(p)‖²) over the parameters that
    ``per_example`` reached (from ``grad_norm_sample``, or from ``grad_sample`` when
    ``from_attribute="grad_sample"``)."""
    squares = None
    for parameter in model.parameters():
        value = getattr(parameter, from_attribute, None)
        if value is None:
            continue
        square = value.square() if from_attribute == "grad_norm_sample" else value.flatten(1).square().sum(1)
        squares = square if squares is None else squares + square
    if squares is None:
        raise ValueError(f"per_example_norms: no parameter of the model has {from_attribute}; run the backward "
                         f"inside manualbp.per_example(model{', norms_only=True' if 'norm' in from_attribute else ''})")
    return squares.sqrt()


def clipped_gradients(model: torch.nn.Module, losses: Tensor, max_norm: float) -> Tensor:
    """DP-SGD's per-example clipping in one backward pass, without per-example gradients.

    ``losses``: (N,), each example's loss (``reduction="none"``), computed by ``model`` with
    manualbp layers. The backward computes every δX and each example's gradient norm ‖gₖ‖ (ghost
    norms) and keeps each layer's δZ; once cₖ = min(1, C/‖gₖ‖) is known, each layer's batch formula
    on cₖ·δZₖ gives Σₖ cₖ δθₖ (book-keeping, Bu et al. 2023): ``p.grad`` holds the sum of the clipped
    per-example gradients (add noise and divide by the batch size yourself, or let the trainer's
    ``dp`` settings do it). Returns the per-example norms before clipping, (N,)."""
    if losses.dim() != 1:
        raise ValueError(f"clipped_gradients: expected one loss per example, shape (N,), got shape "
                         f"{tuple(losses.shape)}; compute the loss with reduction='none'")
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads_before = [None if p.grad is None else p.grad.clone() for p in parameters]
    with per_example(model, norms_only=True) as session:
        session.defer_weight_gradients = True
        losses.sum().backward(retain_graph=True)  # δX everywhere and ‖δθₖ‖²; δθ put off (the graph kept for it)
    norms = per_example_norms(model)
    for parameter, before in zip(parameters, grads_before, strict=True):
        parameter.grad = before  # whatever the pass accumulated is replaced by the clipped sum
        del parameter.grad_norm_sample
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # cₖ = min(1, C/‖gₖ‖)
    session.add_scaled_gradients(scale)  # Σₖ cₖ gₖ
    return norms
