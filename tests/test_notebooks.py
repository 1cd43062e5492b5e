"""The lecture's seven notebooks (notebooks/): stored without outputs, and run top to bottom in a real
Jupyter kernel (nbclient + ipykernel), as a student would: a fresh kernel, the cells in order, the
exercises unsolved. The numbers each notebook prints are checked, and so is every exercise's check
cell: it says "not done yet" as given, "correct" for the reference solution below and "wrong" for a
planted wrong one (both run in the same kernel, as cells appended after the notebook's last).

The kernel imports this checkout's manualbp (PYTHONPATH) and uses full MNIST when $MANUALBP_DATA
has it, else the 5,000-digit sample, exactly as ``python train.py`` would.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from helpers import FULL_MNIST_ROOT, PROJECT_ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = [
    "Learn_XOR",
    "MNIST_NN",
    "GradientDescentDemo",
    "MNIST_Multiple_Linear_Regression",
    "Understanding_chain_rule",
    "Learn_XOR_manualBP",
    "MNIST_NN_manualBP",
    "Attention_manualBP",
]

# ----------------------------------------------------------------------------------------------
# The exercises: what the check cell prints first, the reference solution, and a wrong answer with
# what the check must say about it. They replace the notebook's stub when run.
# ----------------------------------------------------------------------------------------------

EXERCISES = {
    "example-1": {
        "verdict": "Example 1",
        "solution": '''
def example_1_backward(dz, x1, x2, w1, w2):
    return w1 * dz, w2 * dz, x1 * dz, x2 * dz  # ∂Z/∂x_i = w_i, ∂Z/∂w_i = x_i
''',
        "wrong": '''
def example_1_backward(dz, x1, x2, w1, w2):
    return x1 * dz, x2 * dz, w1 * dz, w2 * dz  # x and w swapped
''',
        "diagnosis": "gradients vs reference",
    },
    "example-2": {
        "verdict": "Example 2",
        "solution": '''
def example_2_backward(dZ, X, W):
    return dZ @ W.T, X.T @ dZ  # δX = δZ Wᵀ, δW = Xᵀ δZ
''',
        "wrong": '''
def example_2_backward(dZ, X, W):
    return dZ @ W.T, dZ.T @ X  # δW transposed
''',
        "diagnosis": "the gradient has the wrong shape: expected (3, 4), got (4, 3)",
    },
    "ridge-gradient": {
        "verdict": "ridge gradient",
        "solution": '''
def my_ridge_gradient(X, Y, W, b, gamma):
    residual = X @ W + b - Y  # Yp − Y
    return X.T @ residual + gamma * W, residual.sum(0)  # (XᵀX + γI)W − XᵀY + Xᵀ1bᵀ, Σ(yp − y)
''',
        "wrong": '''
def my_ridge_gradient(X, Y, W, b, gamma):
    residual = X @ W + b - Y
    return X.T @ residual, residual.sum(0)  # the ridge term γW forgotten
''',
        "diagnosis": "gradients vs reference",
    },
    "gradient-descent": {
        "verdict": "gradient descent",
        "solution": '''
def my_gradient_descent(X, Y, gamma, lr, steps):
    W = torch.zeros(X.shape[1], Y.shape[1], dtype=X.dtype)
    b = torch.zeros(Y.shape[1], dtype=X.dtype)
    for _ in range(steps):
        grad_W, grad_b = my_ridge_gradient(X, Y, W, b, gamma)
        W, b = W - lr * grad_W, b - lr * grad_b
    return W, b
''',
        "wrong": '''
def my_gradient_descent(X, Y, gamma, lr, steps):
    W = torch.zeros(X.shape[1], Y.shape[1], dtype=X.dtype)
    b = torch.zeros(Y.shape[1], dtype=X.dtype)
    for _ in range(steps):
        grad_W, grad_b = my_ridge_gradient(X, Y, W, b, gamma)
        W, b = W + lr * grad_W, b + lr * grad_b  # ascent, not descent
    return W, b
''',
        "diagnosis": "the loss went up",
    },
    "softmax-backward": {
        "verdict": "softmax backward",
        "solution": '''
def my_softmax_backward(dY, Y):
    return Y * (dY - (dY * Y).sum(dim=-1, keepdim=True))  # δX = Y·(δY − Σ δY·Y)
''',
        "wrong": '''
def my_softmax_backward(dY, Y):
    return Y * dY  # the − Σ δY·Y term forgotten: the softmax's off-diagonal Jacobian
''',
        "diagnosis": "gradients vs reference",
    },
    "softmax-l2": {
        "verdict": "softmax + L2 loss",
        "solution": '''
def softmax_l2_backward(logits, Y):
    Yp = torch.softmax(logits, dim=1)
    dYp = Yp - Y  # ∂Loss/∂Yp
    return Yp * (dYp - (Yp * dYp).sum(dim=1, keepdim=True))  # Σ_k ∂Yp_k/∂Z_i · δYp_k
''',
        "wrong": '''
def softmax_l2_backward(logits, Y):
    return torch.softmax(logits, dim=1) - Y  # cross-entropy's answer: the softmax's Jacobian forgotten
''',
        "diagnosis": "a factor of the derivative missing or wrong",
    },
}


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def read(name: str):
    return nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)


def tagged(notebook, prefix: str) -> dict[str, object]:
    """Cells tagged ``<prefix>:<exercise>``, by exercise."""
    found = {}
    for cell in notebook.cells:
        for tag in cell.metadata.get("tags", []):
            if tag.startswith(prefix + ":"):
                found[tag.split(":", 1)[1]] = cell
    return found


def text_of(cell) -> str:
    """What a code cell printed on stdout (warnings on stderr aside), and any error."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream" and output.name == "stdout":
            parts.append(output.text)
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
    return "".join(parts)


class Run:
    """An executed notebook: ``printed`` is everything its own cells printed; ``appended[i]`` what the
    i-th appended cell printed."""

    def __init__(self, notebook, own_cells: int) -> None:
        self.notebook = notebook
        self.printed = "\n".join(text_of(cell) for cell in notebook.cells[:own_cells] if cell.cell_type == "code")
        self.appended = [text_of(cell) for cell in notebook.cells[own_cells:]]

    def number(self, pattern: str) -> float:
        match = re.search(pattern, self.printed)
        assert match, f"the notebook did not print a line matching {pattern!r}; it printed:\n{self.printed[-3000:]}"
        return float(match.group(1))

    def numbers(self, pattern: str) -> list[float]:
        return [float(value) for value in re.findall(pattern, self.printed)]

    @property
    def on_sample(self) -> bool:
        return "5,000-digit MNIST sample" in self.printed


@pytest.fixture
def kernel_environment(monkeypatch):
    """The kernel imports this checkout's manualbp and finds full MNIST where the suite was told."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
    if FULL_MNIST_ROOT:
        monkeypatch.setenv("MANUALBP_DATA", FULL_MNIST_ROOT)


def execute(name: str, with_exercise_checks: bool = True) -> Run:
    """Run the notebook top to bottom in a fresh kernel (cwd notebooks/), then, for each exercise, a
    wrong answer and its check cell, then the reference solution and its check cell."""
    notebook = read(name)
    own_cells = len(notebook.cells)
    if with_exercise_checks:
        checks = tagged(notebook, "check")
        for exercise in tagged(notebook, "exercise"):
            for answer in ("wrong", "solution"):
                notebook.cells.append(nbformat.v4.new_code_cell(EXERCISES[exercise][answer].strip()))
                notebook.cells.append(nbformat.v4.new_code_cell(checks[exercise].source))
    client = nbclient.NotebookClient(
        notebook, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}
    )
    client.execute()
    return Run(notebook, own_cells)


def assert_exercises_checked(run: Run, exercises: list[str]) -> None:
    """As given, each check says "not done yet"; a wrong answer is called wrong (with the expected
    diagnosis); the reference solution is called correct."""
    notebook_exercises = list(tagged(run.notebook, "exercise"))
    assert notebook_exercises == exercises
    checks = tagged(run.notebook, "check")
    for index, exercise in enumerate(exercises):
        verdict = EXERCISES[exercise]["verdict"]
        as_given = text_of(checks[exercise])
        assert as_given.startswith(f"{verdict}: not done yet: "), as_given
        wrong, right = run.appended[4 * index + 1], run.appended[4 * index + 3]
        assert wrong.startswith(f"{verdict}: wrong"), wrong
        assert EXERCISES[exercise]["diagnosis"] in wrong, wrong
        assert right.startswith(f"{verdict}: correct"), right


# ----------------------------------------------------------------------------------------------
# Stored as a student gets them
# ----------------------------------------------------------------------------------------------


def test_notebooks_folder_holds_the_lectures_seven_and_the_attention_one():
    assert sorted(path.stem for path in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    notebook = read(name)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}.ipynb cell {index} has stored outputs: clear them before committing"
            assert cell.execution_count is None, f"{name}.ipynb cell {index} has an execution count"
    raw = json.loads((NOTEBOOKS_DIR / f"{name}.ipynb").read_text())
    assert raw["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_uses_manualbp_and_starts_with_the_install_cell(name):
    """Every notebook imports manualbp (no copy of its code) and begins with the same cell that
    installs it from the checkout when it is not importable."""
    notebook = read(name)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert code[0] == [cell.source for cell in read("Learn_XOR").cells if cell.cell_type == "code"][0]
    assert '%pip install --quiet -e "{repository}"' in code[0]
    assert any(re.search(r"^(import manualbp|from manualbp)", source, re.M) for source in code[1:])
    assert not any("class " in source and "autograd.Function" in source for source in code), (
        "a notebook defines its own autograd.Function: use manualbp's"
    )
    assert any("$" in cell.source for cell in notebook.cells if cell.cell_type == "markdown"), "no formula"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_colab_setup_is_a_command_to_run_not_a_placeholder(name):
    """The Colab lines can be run as written once the repository's address is put in (they said
    ``git clone <git URL of manualbp>``, which is no command at all)."""
    setup = next(cell.source for cell in read(name).cells if cell.cell_type == "markdown" and "Colab" in cell.source)
    assert "<" not in setup and ">" not in setup
    assert "!git clone https://github.com/YOUR-ACCOUNT/manualbp.git manualbp" in setup
    assert "!unzip -q manualbp.zip" in setup and "%cd manualbp/notebooks" in setup


def test_exercise_stubs_raise_and_have_a_check_cell():
    for name in NOTEBOOKS:
        notebook = read(name)
        exercises, checks = tagged(notebook, "exercise"), tagged(notebook, "check")
        assert set(exercises) == set(checks), name
        for exercise, cell in exercises.items():
            assert "raise NotImplementedError" in cell.source, f"{name}: {exercise} is not a stub"
            assert exercise in EXERCISES, f"{name}: no reference solution for {exercise}"
            assert EXERCISES[exercise]["solution"].split("(")[0] in "\n" + cell.source, (
                f"{name}: the reference solution of {exercise} defines another function than the stub"
            )


# ----------------------------------------------------------------------------------------------
# Run as a student would
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_learn_xor(kernel_environment):
    run = execute("Learn_XOR")
    assert "all four points right: True" in run.printed
    assert run.number(r"trainer: test/acc (\S+)") == 1.0


@pytest.mark.slow
def test_learn_xor_manual_backprop(kernel_environment):
    run = execute("Learn_XOR_manualBP")
    table = dict(re.findall(r"^(δ\w+)\s+\(.*?\)\s+\S+\s+(\S+)$", run.printed, re.M))
    assert set(table) == {"δYp", "δZ5", "δZ4", "δZ3", "δZ2", "δZ1", "δW2", "δb2", "δW1", "δb1"}
    assert all(float(difference) < 1e-15 for difference in table.values()), table
    assert run.numbers(r"backprop's δ for \S+ vs ours: max abs difference (\S+)") == [0.0] * 4
    assert "all four points right: True" in run.printed


@pytest.mark.slow
def test_gradient_descent_demo(kernel_environment):
    run = execute("GradientDescentDemo")
    assert run.numbers(r"max abs difference (\S+)") == [0.0] * 3
    assert "α = 0.235: converged in 107 steps" in run.printed
    assert "y changes sign in 107 of the 107 steps" in run.printed  # the zig-zag
    assert "α = 0.125: converged in 4 steps" in run.printed
    assert "α = 0.260: did not converge in 200 steps" in run.printed


@pytest.mark.slow
def test_understanding_chain_rule(kernel_environment):
    run = execute("Understanding_chain_rule")
    assert "gradient by hand:  [306.0, -144.0, -18.0, -310.0]" in run.printed
    assert "gradient autograd: [306.0, -144.0, -18.0, -310.0]" in run.printed
    assert "∇z f = Jᵀ ∇x f by hand: [27068.0, 18374.0]" in run.printed
    assert "∇z f by autograd:       [27068.0, 18374.0]" in run.printed
    scalar_net = re.findall(r"^(δ\w+)\s+\S+\s+\S+\s+(\S+)$", run.printed, re.M)
    assert [name for name, _ in scalar_net] == ["δYp", "δZ4", "δZ3", "δZ2", "δZ1", "δW1", "δb1", "δW2", "δb2"]
    assert all(float(difference) < 1e-15 for _, difference in scalar_net)
    assert run.number(r"f = (\S+) \(from 215\)") < 0.01  # gradient descent on f
    assert_exercises_checked(run, ["example-1", "example-2"])


@pytest.mark.slow
def test_mnist_multiple_linear_regression(kernel_environment):
    run = execute("MNIST_Multiple_Linear_Regression")
    assert run.number(r"∇W L: max abs difference from autograd (\S+)") < 1e-9
    assert run.number(r"backprop's δW \+ γW vs the slide's ∇W L: max abs difference (\S+)") < 1e-9
    closed_form = run.number(r"closed form: training loss \S+, test accuracy (\S+)")
    gradient_descent = run.number(r"gradient descent, 100 steps: .* test accuracy (\S+);")
    above_minimum = run.number(r"gradient descent, 100 steps: loss \S+ \((\S+) % above the minimum\)")
    assert above_minimum < (35 if run.on_sample else 20)  # measured: 27 % on the sample, 11 % on full MNIST
    assert closed_form > (0.80 if run.on_sample else 0.85)
    assert gradient_descent > (0.80 if run.on_sample else 0.84)
    assert_exercises_checked(run, ["ridge-gradient", "gradient-descent"])


@pytest.mark.slow
def test_mnist_nn(kernel_environment):
    run = execute("MNIST_NN")
    assert run.number(r"test accuracy: (\S+)") > (0.88 if run.on_sample else 0.94)
    assert run.number(r"trainer: test/acc (\S+)") > (0.70 if run.on_sample else 0.95)


@pytest.mark.slow
def test_mnist_nn_manual_backprop(kernel_environment):
    run = execute("MNIST_NN_manualBP")
    assert run.number(r"largest difference of all: (\S+)") < 1e-15
    assert run.numbers(r"backprop's δ for \S+\s+vs ours: max abs difference (\S+)") == [0.0] * 6
    assert run.number(r"test accuracy: (\S+)") > (0.88 if run.on_sample else 0.94)
    assert_exercises_checked(run, ["softmax-l2"])


@pytest.mark.slow
def test_attention_manual_backprop(kernel_environment):
    run = execute("Attention_manualBP")
    assert max(run.numbers(r"vs PyTorch's F.scaled_dot_product_attention: max abs difference (\S+)")) < 1e-14
    differences = run.numbers(r"δ\w+: autograd's vs ours: max abs difference (\S+)")
    assert len(differences) == 5 and max(differences) < 1e-14
    assert run.number(r"attention_backward vs the lines above: largest difference (\S+)") < 1e-15
    written, total = re.search(r"(\d+) of (\d+) arithmetic backward nodes hand-written", run.printed).groups()
    assert written == total and int(total) > 10
    losses = run.numbers(r"step +\d+  loss (\S+) nats")
    assert losses[-1] < 0.8 * losses[0]  # it learns within its minute
    assert_exercises_checked(run, ["softmax-backward"])
