"""The playground's nets, data and numbers, without any web server: a :class:`Lab` is one tab's
state (its data, its net, its step count and loss curves); :func:`parse_config` checks what the page
sends. Every number comes from manualbp: training steps are ``manual.backprop`` and
``manual.gradient_descent_step``, the graph's Z's and δ's are ``manual.backprop_trace``, the derivative
factors of the formulas are the layers' own ``*_backward`` functions.

The graph is the slides' (XOR net, "chain rule for a general neural net"), with W in the slides'
layout (in, out) -- torch stores its transpose, (out, in):

    X → Z₁ = XW₁ → Z₂ = Z₁ + b₁ → Z₃ = σ(Z₂) → Z₄ = Z₃W₂ → Z₅ = Z₄ + b₂ → Yp = σ(Z₅) → Loss
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from manualbp.errors import ManualbpError
from manualbp.layers.activations import elu_backward, relu_backward, sigmoid_backward, tanh_backward
from manualbp.layers.linear import linear_forward
from manualbp.layers.softmax import softmax_forward
from manualbp.manual import backprop, backprop_trace, gradient_descent_step
from manualbp.nn import MLP, EuclideanLoss, Linear, SoftmaxCrossEntropyLoss, SoftmaxEuclideanLoss

DTYPE = torch.float64  # tiny nets: float64 costs nothing and keeps the δ's exact to ~1e-15


class ParameterError(ManualbpError):
    """A parameter from the page that is missing, of the wrong kind or out of its bounds."""


# ----------------------------------------------------------------------------------------------
# What the page may ask for, with its bounds
# ----------------------------------------------------------------------------------------------

DATASETS = ("xor", "circles", "moons", "spiral", "blobs", "function")
FUNCTIONS = ("sin", "abs", "step", "gauss", "cubic", "nielsen")
ACTIVATION_NAMES = ("sigmoid", "relu", "elu", "tanh")
LOSSES = ("euclidean", "softmax_cross_entropy", "softmax_euclidean")
LOSS_TITLES = {
    "euclidean": "Euclidean ½‖Yp − Y‖²",
    "softmax_cross_entropy": "softmax + cross-entropy",
    "softmax_euclidean": "softmax + L2 (the lecture's question)",
}
MAX_HIDDEN_LAYERS, MAX_WIDTH = 4, 16
MAX_POINTS, MAX_STEPS_PER_CALL, MAX_SEED = 1000, 200, 2**31 - 1
GRID = 40  # the decision boundary is evaluated on GRID × GRID points
HISTORY = 1000  # loss values kept per curve; older ones are thinned out

DEFAULTS = {  # tanh: the XOR net learns in 20-45 steps (every seed of 0-19); sigmoid sits ~500 steps on a plateau
    "dataset": "xor", "function": "sin", "points": 200, "noise": 0.1, "hidden": [8],
    "activation": "tanh", "loss": "euclidean", "lr": 5.0, "batch": 0, "seed": 0,
}
PLATEAU_STEPS = 20  # XOR's loss moving less than 1 % over this many steps, a point still wrong: a plateau
PLATEAU = ("a plateau: the loss has barely moved for {steps} steps and not every point is right yet -- the net "
           "sits where its gradients are tiny (with sigmoid, every Yp near 0.5, loss near 0.125). It escapes "
           "if you keep playing (a few hundred steps); tanh, a larger learning rate or another seed avoid it")


def _number(config: dict, name: str, low: float, high: float, integer: bool = False):
    value = config.get(name, DEFAULTS[name])
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParameterError(f"{name}: expected a number from {low} to {high}, got {value!r}")
    if integer and value != int(value):
        raise ParameterError(f"{name}: expected a whole number from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise ParameterError(f"{name}: expected a number from {low} to {high}, got {value!r}")
    return int(value) if integer else float(value)


def _choice(config: dict, name: str, choices: tuple[str, ...]) -> str:
    value = config.get(name, DEFAULTS[name])
    if value not in choices:
        raise ParameterError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def parse_config(config) -> dict:
    """The page's settings, checked and completed with the defaults; a :class:`ParameterError` that
    says which setting, what was expected and what was got for anything else."""
    if not isinstance(config, dict):
        raise ParameterError(f"config: expected an object of settings, got {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ParameterError(f"unknown setting(s) {', '.join(map(str, unknown))}; known: {', '.join(DEFAULTS)}")
    hidden = config.get("hidden", DEFAULTS["hidden"])
    if not isinstance(hidden, list) or len(hidden) > MAX_HIDDEN_LAYERS:
        raise ParameterError(f"hidden: expected a list of at most {MAX_HIDDEN_LAYERS} layer widths, got {hidden!r}")
    for width in hidden:
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
            raise ParameterError(
                f"hidden: each layer width must be a whole number from 1 to {MAX_WIDTH}, got {width!r}"
            )
    parsed = {
        "dataset": _choice(config, "dataset", DATASETS),
        "function": _choice(config, "function", FUNCTIONS),
        "points": _number(config, "points", 10, MAX_POINTS, integer=True),
        "noise": _number(config, "noise", 0.0, 1.0),
        "hidden": list(hidden),
        "activation": _choice(config, "activation", ACTIVATION_NAMES),
        "loss": _choice(config, "loss", LOSSES),
        "lr": _number(config, "lr", 1e-5, 100.0),
        "batch": _number(config, "batch", 0, MAX_POINTS, integer=True),
        "seed": _number(config, "seed", 0, MAX_SEED, integer=True),
    }
    if parsed["dataset"] == "xor":
        parsed["points"] = 4  # the slide's four points
    if parsed["dataset"] == "function" and parsed["loss"] != "euclidean":
        raise ParameterError(
            f"loss: {parsed['loss']} needs classes; the 1-D function is a regression -- use the Euclidean loss"
        )
    if parsed["batch"] > parsed["points"]:
        raise ParameterError(
            f"batch: a mini-batch of {parsed['batch']} is larger than the {parsed['points']} points; "
            f"give 1 to {parsed['points']}, or 0 for the full batch"
        )
    return parsed


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

XOR_X = [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # the slide's table
XOR_Y = [1, 0, 1, 0]


def _function(name: str, x: np.ndarray) -> np.ndarray:
    if name == "nielsen":  # the universal-approximation chapter's f(x) on [0, 1], stretched to [−1, 1]
        t = (x + 1) / 2
        return 0.2 + 0.4 * t**2 + 0.3 * t * np.sin(15 * t) + 0.05 * np.cos(50 * t)
    return {
        "sin": lambda: np.sin(3 * x),
        "abs": lambda: np.abs(x),
        "step": lambda: (x > 0).astype(float),
        "gauss": lambda: np.exp(-8 * x**2),
        "cubic": lambda: x**3,
    }[name]()


def make_data(config: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): X (N, 2) in about [−1, 1]² with class labels y (N,) in {0, 1}; or, for the 1-D
    function, X (N, 1) in [−1, 1] with values y (N,)."""
    rng = np.random.default_rng(seed)
    n, noise, name = config["points"], config["noise"], config["dataset"]
    if name == "xor":
        return np.array(XOR_X), np.array(XOR_Y)
    if name == "function":
        x = np.sort(rng.uniform(-1, 1, n))
        return x[:, None], _function(config["function"], x) + noise * 0.3 * rng.standard_normal(n)
    labels = np.arange(n) % 2
    if name == "circles":
        radius = np.where(labels == 0, 0.35, 0.8) + rng.uniform(-0.1, 0.1, n)
        angle = rng.uniform(0, 2 * np.pi, n)
        points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    elif name == "moons":
        angle = rng.uniform(0, np.pi, n)
        upper = np.stack([np.cos(angle) - 0.5, np.sin(angle) - 0.25], 1)
        lower = np.stack([0.5 - np.cos(angle), 0.25 - np.sin(angle)], 1)
        points = np.where(labels[:, None] == 0, upper, lower) * 0.8
    elif name == "spiral":
        t = rng.uniform(0.25, 1, n)
        angle = 3 * np.pi * t + np.pi * labels
        points = np.stack([t * np.cos(angle), t * np.sin(angle)], 1) * 0.95
    else:  # blobs
        centres = np.array([[-0.45, -0.35], [0.45, 0.35]])
        points = centres[labels] + 0.2 * rng.standard_normal((n, 2))
    return points + noise * 0.5 * rng.standard_normal(points.shape), labels


# ----------------------------------------------------------------------------------------------
# One tab's net
# ----------------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return f"{value + 0.0:.4g}".replace("-", "−") if math.isfinite(value) else str(value)  # −0 as 0


def _vector(values) -> str:
    return "[" + ", ".join(_fmt(float(v)) for v in values) + "]"


def _matrix(values) -> str:
    return "[" + "; ".join(_vector(row) for row in values) + "]"


def _finite(values) -> list:
    """A tensor or array as nested lists of floats (:func:`json_safe` turns NaN and ±inf into None)."""
    array = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    return array.round(12).tolist() if array.size else []


def json_safe(data):
    """``data`` with every NaN and ±inf float as None (JSON has no such numbers)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, list):
        return [json_safe(item) for item in data]
    if isinstance(data, dict):
        return {key: json_safe(value) for key, value in data.items()}
    return data


SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def sub(index: int) -> str:
    return str(index).translate(SUBSCRIPTS)


@dataclass
class Node:
    """A node of the slides' graph: its name, the formula that made it, which layer output holds
    its value (−1: the input X) and its δ, and for a Z = XW node, which Linear it belongs to."""

    name: str
    kind: str  # input, matmul, bias, activation, output
    forward: str
    output: int  # index into the trace's outputs (−1: X)
    linear: int | None = None  # index of the Linear layer, for matmul and bias nodes
    parameter: str | None = None  # "W₁", "b₁"


class Lab:
    """One tab's playground: data, net, optimiser state and loss curves, built from a checked
    config (:func:`parse_config`)."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.reset()

    # -- building -----------------------------------------------------------------------------

    def reset(self) -> None:
        config = self.config
        self.classify = config["dataset"] != "function"
        inputs, targets = make_data(config, config["seed"])
        test_inputs, test_targets = make_data(config, config["seed"] + 1)
        self.inputs = torch.tensor(inputs, dtype=DTYPE)
        self.test_inputs = torch.tensor(test_inputs, dtype=DTYPE)
        self.labels = targets
        softmax = config["loss"] != "euclidean"
        out = 2 if softmax else 1
        self.targets, self.test_targets = (self._targets(t, softmax) for t in (targets, test_targets))
        torch.manual_seed(config["seed"])
        sizes = [self.inputs.shape[1], *config["hidden"], out]
        output_activation = "sigmoid" if self.classify and not softmax else None  # the XOR slide's Yp = σ(Z₅)
        self.net = MLP(sizes, activation=config["activation"], output_activation=output_activation,
                       fuse=False, dtype=DTYPE)
        self.loss = {
            "euclidean": lambda: EuclideanLoss(reduction="mean"),
            "softmax_cross_entropy": SoftmaxCrossEntropyLoss,
            "softmax_euclidean": SoftmaxEuclideanLoss,
        }[config["loss"]]()
        self.steps = 0
        self.train_losses: list[float] = []
        self.test_losses: list[float] = []
        self.loss_steps: list[int] = []  # the step of each recorded loss
        self.batch_order = torch.Generator().manual_seed(config["seed"])
        self.batch_queue: list[int] = []
        self.nodes = self._graph()
        self._record_losses(backprop_trace(self.net, self.loss, self.inputs, self.targets).loss)

    def _targets(self, values: np.ndarray, softmax: bool) -> Tensor:
        if softmax:
            return torch.tensor(values, dtype=torch.long)  # class indices, as the softmax losses take them
        return torch.tensor(values, dtype=DTYPE)[:, None]  # (N, 1): Y as the slide's column

    def _graph(self) -> list[Node]:
        """The slides' chain, node by node: X → Z₁ = XW₁ → Z₂ = Z₁ + b₁ → Z₃ = σ(Z₂) → ... → Yp."""
        nodes = [Node("X", "input", "X: the inputs, one row per point", -1)]
        layers = list(self.net)
        counter, linear_count, previous = 0, 0, "X"
        for index, layer in enumerate(layers):
            last = index == len(layers) - 1
            if isinstance(layer, Linear):
                linear_count += 1
                counter += 1
                w, b = f"W{sub(linear_count)}", f"b{sub(linear_count)}"
                matmul = f"Z{sub(counter)}"
                nodes.append(Node(matmul, "matmul", f"{matmul} = {previous}{w}", index, index, w))
                counter += 1
                name = "Yp" if last and isinstance(self.loss, EuclideanLoss) else f"Z{sub(counter)}"
                nodes.append(Node(name, "bias", f"{name} = {matmul} + {b}", index, index, b))
            else:
                counter += 1
                name = "Yp" if last else f"Z{sub(counter)}"
                symbol = {"sigmoid": "σ", "relu": "ReLU", "elu": "ELU", "tanh": "tanh"}[self.config["activation"]]
                if last:
                    symbol = "σ"
                nodes.append(Node(name, "activation", f"{name} = {symbol}({previous})", index))
            previous = nodes[-1].name
        return nodes

    # -- training -----------------------------------------------------------------------------

    def _batch(self) -> Tensor | None:
        size = self.config["batch"]
        if size == 0:
            return None
        if len(self.batch_queue) < size:  # a new epoch: the points in a fresh random order
            self.batch_queue = torch.randperm(len(self.inputs), generator=self.batch_order).tolist()
        batch, self.batch_queue = self.batch_queue[:size], self.batch_queue[size:]
        return torch.tensor(batch)

    def step(self, count: int = 1, record_every: int | None = None) -> None:
        """``count`` steps of gradient descent: manual.backprop on a batch, then θ ← θ − lr·δθ; the losses
        are recorded every ``record_every`` steps (default: about 20 times over the ``count``)."""
        record_every = record_every or max(1, count // 20)
        for _ in range(count):
            batch = self._batch()
            inputs, targets = self.inputs, self.targets
            if batch is not None:
                inputs, targets = inputs[batch], targets[batch]
            _, grads = backprop(self.net, self.loss, inputs, targets)
            gradient_descent_step(self.net, grads, self.config["lr"])
            self.steps += 1
            if self.steps % record_every == 0:
                self._record_losses()

    def _record_losses(self, train_loss: Tensor | None = None) -> None:
        with torch.no_grad():
            if train_loss is None:
                train_loss = self.loss(self.net(self.inputs), self.targets)
            test_loss = self.loss(self.net(self.test_inputs), self.test_targets)
        self.train_losses.append(float(train_loss))
        self.test_losses.append(float(test_loss))
        self.loss_steps.append(self.steps)
        if len(self.train_losses) > HISTORY:  # keep every other value: the curve's shape stays
            self.train_losses, self.test_losses = self.train_losses[::2], self.test_losses[::2]
            self.loss_steps = self.loss_steps[::2]

    @torch.no_grad()
    def plateau(self) -> str | None:
        """For XOR, a sentence naming the plateau when the loss has moved less than 1 % over the last
        :data:`PLATEAU_STEPS` steps while a point is still on the wrong side; else None."""
        if self.config["dataset"] != "xor" or self.steps < PLATEAU_STEPS:
            return None
        outputs = self.net(self.inputs)
        if self.config["loss"] == "euclidean":
            predicted = (outputs[:, 0] > 0.5).long()
        else:
            predicted = outputs.argmax(1)
        if bool((predicted == torch.tensor(self.labels)).all()):
            return None
        earlier = [loss for loss, step in zip(self.train_losses, self.loss_steps, strict=True)
                   if step <= self.steps - PLATEAU_STEPS]
        now = self.train_losses[-1]
        if not earlier or not math.isfinite(now) or abs(now - earlier[-1]) >= 0.01 * abs(earlier[-1]):
            return None
        return PLATEAU.format(steps=self.steps - self.loss_steps[len(earlier) - 1])
    # -- what the page shows ------------------------------------------------------------------

    def trace(self):
        """The forward and backward pass of the current net on all training points (the pass
        that a full-batch step would take now)."""
        return backprop_trace(self.net, self.loss, self.inputs, self.targets)

    def node_values(self, trace, node: Node) -> tuple[Tensor, Tensor]:
        """(value, δ) of a node over all points: (N, width) each."""
        if node.kind == "input":
            return trace.inputs, trace.input_grad
        if node.kind == "matmul":  # Z = XW, before + b: the Linear's formula without its bias
            layer = self.net[node.linear]
            below = trace.inputs if node.linear == 0 else trace.outputs[node.linear - 1]
            return linear_forward(below, layer.weight.detach()), trace.output_grads[node.output]  # δ(XW) = δ(XW + b)
        return trace.outputs[node.output], trace.output_grads[node.output]

    def _parameter_entries(self, trace):
        """W and b of each Linear in the slides' layout (W: (in, out)) with δW = Xᵀ δZ and δb = Σ δZ,
        each with the graph node it feeds (Z = XW, Z = Z + b)."""
        for node in self.nodes:
            if node.parameter is None:
                continue
            layer = self.net[node.linear]
            key = "weight" if node.kind == "matmul" else "bias"
            value = getattr(layer, key).detach()
            grad = trace.grads[f"{node.linear}.{key}"]
            if key == "weight":
                value, grad = value.t(), grad.t()  # torch's (out, in) -> the slides' (in, out)
            yield {"name": node.parameter, "value": _finite(value), "delta": _finite(grad)}, node

    def state(self, point: int = 0, selected: str | None = None) -> dict:
        """Everything the page draws, as JSON-ready data; ``point``: the training point whose row of
        each Z and δ is shown; ``selected``: the node or parameter whose formulas are written out."""
        if not 0 <= point < len(self.inputs):
            raise ParameterError(f"point: expected a training point from 0 to {len(self.inputs) - 1}, got {point}")
        trace = self.trace()
        nodes = []
        for position, node in enumerate(self.nodes):
            value, delta = self.node_values(trace, node)
            nodes.append({
                "name": node.name, "kind": node.kind, "forward": node.forward, "parameter": node.parameter,
                "value": _finite(value[point]), "delta": _finite(delta[point]) if delta is not None else None,
                "backward": self._backward_formula(trace, position, point)[0],
            })
        parameters = [entry for entry, _ in self._parameter_entries(trace)]
        names = [n["name"] for n in nodes] + [p["name"] for p in parameters] + ["Loss"]
        if selected is not None and selected not in names:
            raise ParameterError(f"selected: no node or parameter named {selected!r}; choose one of {', '.join(names)}")
        loss = float(trace.loss)
        state = {
            "config": self.config, "steps": self.steps, "loss": loss, "lossName": LOSS_TITLES[self.config["loss"]],
            "trainLosses": self.train_losses, "testLosses": self.test_losses,
            "points": _finite(self.inputs), "labels": np.asarray(self.labels).tolist(), "classify": self.classify,
            "point": point, "nodes": nodes, "parameters": parameters,
            "lossNode": self._loss_formula(trace, point),
            "selected": selected, "details": self.details(trace, selected, point) if selected else None,
            "diverged": not math.isfinite(loss), "plateau": self.plateau(),
        }
        state.update(self._surface())
        return json_safe(state)

    @torch.no_grad()
    def _surface(self) -> dict:
        if not self.classify:
            xs = torch.linspace(-1.1, 1.1, 200, dtype=DTYPE)[:, None]
            return {"curve": {"x": _finite(xs[:, 0]), "y": _finite(self.net(xs)[:, 0])}}
        axis = torch.linspace(-1.5, 1.5, GRID, dtype=DTYPE)
        if self.config["dataset"] == "xor":
            axis = torch.linspace(-0.5, 1.5, GRID, dtype=DTYPE)
        grid_y, grid_x = torch.meshgrid(axis, axis, indexing="ij")
        outputs = self.net(torch.stack([grid_x.flatten(), grid_y.flatten()], 1))
        if self.config["loss"] != "euclidean":
            outputs = softmax_forward(outputs, 1)[:, 1:]  # P(class 1)
        return {"boundary": {"low": float(axis[0]), "high": float(axis[-1]), "size": GRID,
                             "values": _finite(outputs[:, 0].reshape(GRID, GRID))}}

    # -- the formulas with the numbers put in ---------------------------------------------------

    def _derivative(self, activation: torch.nn.Module, input: Tensor, output: Tensor) -> tuple[str, Tensor]:
        """The activation's f'(A) as a tensor, from its own backward formula applied to δZ = 1."""
        ones = torch.ones_like(output)
        name = type(activation).__name__.lower()
        if name == "sigmoid":
            return "σ(Z)(1 − σ(Z))", sigmoid_backward(ones, output)
        if name == "relu":
            return "1[Z > 0]", relu_backward(ones, output)
        if name == "elu":
            return "(1 if Z > 0 else ELU(Z) + 1)", elu_backward(ones, input, output, activation.alpha)
        return "(1 − tanh²(Z))", tanh_backward(ones, output)

    def _backward_formula(self, trace, position: int, point: int) -> tuple[str, str]:
        """(the δ formula of node ``position`` as the slide writes it, the same with row ``point``'s numbers)."""
        node = self.nodes[position]
        _, delta = self.node_values(trace, node)
        if position == len(self.nodes) - 1:  # the net's output: its δ comes from the loss
            return self._loss_delta(trace, point)
        after = self.nodes[position + 1]
        _, delta_after = self.node_values(trace, after)
        d, da = f"δ{node.name}", f"δ{after.name}"
        if after.kind == "bias":
            symbolic = f"{d} = {da}"
            return symbolic, f"{symbolic} = {_vector(delta[point])}"
        if after.kind == "matmul":
            weight = self.net[after.linear].weight.detach()  # (out, in): the slides' W is its transpose
            symbolic = f"{d} = {da} {after.parameter}ᵀ"
            return symbolic, (f"{symbolic} = {_vector(delta_after[point])} · {_matrix(weight)} = "
                              f"{_vector(delta[point])}")
        activation = self.net[after.output]
        value, _ = self.node_values(trace, node)
        value_after, _ = self.node_values(trace, after)
        words, derivative = self._derivative(activation, value, value_after)
        words = words.replace("Z", node.name)
        symbolic = f"{d} = {words} · {da}"
        return symbolic, (f"{symbolic} = {_vector(derivative[point])} · {_vector(delta_after[point])} = "
                          f"{_vector(delta[point])}")

    def _loss_delta(self, trace, point: int) -> tuple[str, str]:
        node = self.nodes[-1]
        value, delta = self.node_values(trace, node)
        n = len(self.inputs)
        if isinstance(self.loss, EuclideanLoss):
            target = self.targets[point]
            symbolic = "δYp = (Yp − Y)/N"
            return symbolic, (f"{symbolic} = ({_vector(value[point])} − {_vector(target)})/{n} = "
                              f"{_vector(delta[point])}")
        probabilities = softmax_forward(value[point], 0)  # Yp = softmax(Z)
        target = torch.nn.functional.one_hot(self.targets[point], 2).to(DTYPE)
        if isinstance(self.loss, SoftmaxCrossEntropyLoss):
            symbolic = f"δ{node.name} = (Yp − Y)/N, Yp = softmax({node.name})"
            return symbolic, (f"{symbolic} = ({_vector(probabilities)} − {_vector(target)})/{n} = "
                              f"{_vector(delta[point])}")
        symbolic = f"δ{node.name} = (diag(Yp) − Yp Ypᵀ)(Yp − Y)/N, Yp = softmax({node.name})"
        return symbolic, (f"{symbolic}: Yp = {_vector(probabilities)}, Y = {_vector(target)}, N = {n} → "
                          f"{_vector(delta[point])}")

    def _loss_formula(self, trace, point: int) -> dict:
        output = self.nodes[-1].name
        forward = {
            "euclidean": "L = (1/N) Σₖ ½‖Ypₖ − Yₖ‖²",
            "softmax_cross_entropy": f"L = −(1/N) Σₖ Σᵢ Yₖᵢ log softmax({output})ₖᵢ",
            "softmax_euclidean": f"L = (1/N) Σₖ ½‖softmax({output})ₖ − Yₖ‖²",
        }[self.config["loss"]]
        target = self.targets[point]
        return {"name": "Loss", "forward": f"{forward} = {_fmt(float(trace.loss))}", "value": _finite(trace.loss),
                "target": _finite(target) if target.dim() else int(target), "delta": 1.0, "backward": "δL = 1"}

    def details(self, trace, selected: str, point: int) -> dict:
        """The selected node's or parameter's formulas, forward and backward, with numbers."""
        for position, node in enumerate(self.nodes):
            if node.name != selected:
                continue
            value, delta = self.node_values(trace, node)
            forward = node.forward
            if node.kind != "input":
                below = self.nodes[position - 1]
                below_value, _ = self.node_values(trace, below)
                if node.kind == "matmul":
                    weight = self.net[node.linear].weight.detach().t()
                    forward += f" = {_vector(below_value[point])} · {_matrix(weight)}"
                elif node.kind == "bias":
                    forward += f" = {_vector(below_value[point])} + {_vector(self.net[node.linear].bias.detach())}"
                else:
                    forward += f", {below.name} = {_vector(below_value[point])}"
            forward += f" = {_vector(value[point])}"
            _, numbers = self._backward_formula(trace, position, point)
            return {"name": node.name, "forward": forward, "backward": numbers, "value": _finite(value[point]),
                    "delta": _finite(delta[point])}
        for entry, node in self._parameter_entries(trace):
            if entry["name"] != selected:
                continue
            position = self.nodes.index(node)
            out, below = self.nodes[position], self.nodes[position - 1]
            if node.kind == "matmul":
                below_value, _ = self.node_values(trace, below)
                _, delta = self.node_values(trace, out)
                backward = (f"δ{entry['name']} = {below.name}ᵀ δ{out.name} (summed over the N = {len(self.inputs)} "
                            f"points; point {point} adds {below.name}ₖᵀ δ{out.name}ₖ = "
                            f"{_vector(below_value[point])}ᵀ · {_vector(delta[point])}) = {_matrix(entry['delta'])}")
                forward = f"{entry['name']} (in × out, the slides' layout) = {_matrix(entry['value'])}"
            else:
                backward = f"δ{entry['name']} = Σₖ (δ{out.name})ₖ,: = {_vector(entry['delta'])}"
                forward = f"{entry['name']} = {_vector(entry['value'])}"
            return {"name": entry["name"], "forward": forward, "backward": backward, "value": entry["value"],
                    "delta": entry["delta"]}
        return {"name": "Loss", **self._loss_formula(trace, point)}

    def node_matrix(self, name: str) -> dict:
        """A node's value and δ over all training points (for tests and for a closer look)."""
        trace = self.trace()
        for node in self.nodes:
            if node.name == name:
                value, delta = self.node_values(trace, node)
                return {"name": name, "value": _finite(value), "delta": _finite(delta)}
        names = ", ".join(node.name for node in self.nodes)
        raise ParameterError(f"node: no node named {name!r}; choose one of {names}")

    def weights(self) -> dict:
        """The net's parameters in torch's layout, keyed like ``net.named_parameters()``."""
        return {name: _finite(parameter) for name, parameter in self.net.named_parameters()}
