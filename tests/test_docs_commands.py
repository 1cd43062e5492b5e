"""Every command the README and the documentation site (docs/pages/) show runs as written.

The commands are read from the pages themselves (their bash blocks and inline ``python ...`` code,
see tests/site_pages.py), so a command added there is tested here. Every ``python train.py``,
``python eval.py`` and ``python -m manualbp.<tool>`` command runs in a fresh folder (nothing but what
the command writes), with ``$MANUALBP_DATA`` pointing at small MNIST-format files the test writes, so
that each takes seconds. Only placeholders are substituted: ``RUN``, ``CHECKPOINT``, ``CKPT`` and
``outputs/<model>/runs/<time>`` (a finished run this test makes first), ``/data`` (a data root),
``my_text.txt``, ``image.png``, ``model.ckpt``, ``MODULE:FACTORY`` (files and a model this test
supplies), ``a|b|c`` (one of the choices: the first) and ``[optional arguments]`` (kept where they
are concrete options, dropped where they hold a placeholder). The data root also holds
``tinyshakespeare/input.txt`` (what the download would put there: this machine has no internet).
Two things are added: a ``model=gpt`` command runs 50 of its 2,000 steps (``trainer.max_steps=50``),
and an Optuna search that does not say how many trials runs 2 of its 20, one epoch each
(``hydra.sweeper.n_trials=2 trainer.max_epochs=1``), the rest being the same steps, or trials, again.
Every command runs torch on one thread (``OMP_NUM_THREADS=1``: the data is tiny, and on a loaded
machine a second thread only waits). The commands that are not run here (servers, installs,
several machines, the benchmark's measurements) are listed in ``NOT_RUN`` with the reason and the
test that covers them instead; a command that is neither run nor listed fails
``test_every_documented_command_is_run_or_says_why_not``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from helpers import PROJECT_ROOT, run_train_py, write_mnist_files
from site_pages import PAGES, all_shell_commands, blocks

from manualbp.training.data.mnist_files import DATA_ENV


def documented_commands() -> list[str]:
    """Every command the pages show, once, a line of ``a && b`` as its two commands."""
    commands = [part.strip() for _, line in all_shell_commands() for part in line.split(" && ")]
    return list(dict.fromkeys(commands))


COMMANDS = documented_commands()
TRAIN_COMMANDS = [command for command in COMMANDS if command.startswith("python train.py")]

def is_a_mention(command: str) -> bool:
    """``python -m manualbp.predict`` in prose names the tool of a full command shown elsewhere."""
    return any(other != command and other.startswith(command + " ") for other in COMMANDS)


# Commands run by the tests below, by their first words.
RUN_HERE = ("python eval.py", "python -m manualbp.testing", "python -m manualbp.predict", "python -m manualbp.sample",
            "python -m manualbp.coverage", "python -m manualbp.demos.")
OTHER_COMMANDS = [command for command in COMMANDS if command.startswith(RUN_HERE) and not is_a_mention(command)]

ONE_THREAD = {"OMP_NUM_THREADS": "1"}

# Commands not run as written, each with why and what tests it instead.
NOT_RUN = {
    "pip install torch torchvision --index-url": "an install from PyTorch's CPU-only package index, which this "
                                                 "test cannot reach; the torch installed here is that build",
    "python -m pytest": "the test suite: this run, or (-m \"not slow\") its quick part",
    'pip install -e ".[': "installs an extra of pyproject.toml: test_the_extras_the_pages_install_are_defined checks "
                          "each one exists and that its packages are the ones installed here",
    "mkdocs build --strict -f docs/mkdocs.yml": "tests/test_docs.py runs it as written",
    "mkdocs serve": "a server until stopped; it serves what `mkdocs build` builds (tests/test_docs.py)",
    "python -m manualbp.playground": "a server until Ctrl+C: tests/test_playground.py starts this command on a free "
                                     "port of 127.0.0.1, drives its page in Chromium and stops it with SIGINT",
    "tensorboard --logdir": "TensorBoard's server: tests/test_loggers.py reads back the event files it shows",
    "torchrun": "several machines: tests/test_multinode.py runs it as two nodes on 127.0.0.1",
    "srun": "a SLURM cluster, which this machine is not (the page says so)",
    "python -m manualbp.bench": "a measurement of minutes to an hour (full MNIST for --e2e, --time-to-98 and "
                                "--softmax-losses); tests/test_bench.py runs its step, LeNet, GPT, memory and "
                                "ResNet-18 modes at small sizes",
}


def test_the_pages_show_commands():
    assert len(TRAIN_COMMANDS) >= 10, TRAIN_COMMANDS
    assert any(command.startswith("python train.py -m ") for command in TRAIN_COMMANDS)
    assert len(OTHER_COMMANDS) >= 8, OTHER_COMMANDS


def test_every_documented_command_is_run_or_says_why_not():
    unaccounted = [command for command in COMMANDS
                   if not command.startswith(("python train.py", *RUN_HERE, *NOT_RUN)) and not is_a_mention(command)]
    assert not unaccounted, f"documented commands no test runs (run them here or say why in NOT_RUN): {unaccounted}"
    stale = [prefix for prefix in NOT_RUN if not any(command.startswith(prefix) for command in COMMANDS)]
    assert not stale, f"NOT_RUN lists commands the pages no longer show: {stale}"


def test_the_extras_the_pages_install_are_defined():
    """``pip install -e ".[x]"``: x is an extra of pyproject.toml, and its packages are importable here."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's tomllib reads pyproject.toml")
    extras = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    shown = {extra for command in COMMANDS for extra in re.findall(r'pip install -e "\.\[(\w+)\]"', command)}
    assert {"test", "docs", "tensorboard", "sweep", "playground"} <= shown, shown
    for extra in shown:
        assert extra in extras, f'the pages install ".[{extra}]", which pyproject.toml does not define'
    importable = {"tensorboard": ["tensorboard"], "sweep": ["hydra_plugins.hydra_optuna_sweeper"],
                  "playground": ["starlette", "uvicorn"], "docs": ["mkdocs", "material", "mkdocstrings"]}
    for extra, modules in importable.items():
        missing = [module for module in modules if find_spec(module) is None]
        if extra == "docs" and missing:
            continue  # the docs extra is optional for the suite (tests/test_docs.py skips without it)
        assert not missing, f".[{extra}] is installed here but {missing} cannot be imported"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Small MNIST, FashionMNIST and KMNIST (5,500 train / 500 test images each: the default
    5,000-image validation split fits)."""
    root = tmp_path_factory.mktemp("readme-data")
    for dataset in ("MNIST", "FashionMNIST", "KMNIST"):
        write_mnist_files(root, dataset=dataset, train_count=5500, test_count=500)
    (root / "tinyshakespeare").mkdir()
    (root / "tinyshakespeare" / "input.txt").write_text(TEXT)
    return root


TEXT = "".join(f"First Citizen:\nBefore we proceed any further, hear me speak ({i}).\n\n" for i in range(300))


@pytest.fixture(scope="module")
def finished_mnist_run(data_root, tmp_path_factory) -> Path:
    """RUN in the README's resume command: a finished ``python train.py model=mnist`` run."""
    run = tmp_path_factory.mktemp("readme-run") / "run"
    result = run_train_py("model=mnist", f"hydra.run.dir={run}", cwd=run.parent,
                          env={DATA_ENV: str(data_root), **ONE_THREAD})
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def arguments(command: str, data_root: Path, request) -> list[str]:
    """The command's arguments after ``python train.py``, placeholders filled in."""
    words = shlex.split(command)
    assert words[:2] == ["python", "train.py"], command
    filled = []
    for word in words[2:]:
        if "RUN" in word:
            word = word.replace("RUN", str(request.getfixturevalue("finished_mnist_run")))
        word = re.sub(r"=/data$", f"={data_root}", word)
        if word.endswith("=my_text.txt"):
            text = data_root / "my_text.txt"
            text.write_text(TEXT)
            word = word.replace("my_text.txt", str(text))
        word = re.sub(r"=(\w+)(\|\w+)+$", r"=\1", word)  # sin|abs|step: the first choice
        filled.append(word)
    if "model=gpt" in filled:
        filled += ["trainer.max_steps=50", "data.steps_per_epoch=25", "data.val_batches=5"]
    if any(word.startswith("hparams_search=") for word in filled) and not any(
            word.startswith("hydra.sweeper.n_trials=") for word in filled):
        filled += ["hydra.sweeper.n_trials=2", "trainer.max_epochs=1"]
    return filled


@pytest.mark.slow
@pytest.mark.parametrize("command", TRAIN_COMMANDS)
def test_documented_train_command_runs_as_written(command, data_root, tmp_path, request):
    if "accelerator=gpu" in command and not torch.cuda.is_available():
        pytest.skip("the command asks for GPUs and this machine has none")
    args = arguments(command, data_root, request)
    result = run_train_py(*args, cwd=tmp_path, env={DATA_ENV: str(data_root), **ONE_THREAD})
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    if "hydra.run.dir=" in command:
        results = [Path(next(a for a in args if a.startswith("hydra.run.dir=")).split("=", 1)[1]) / "results.json"]
    else:
        results = list((tmp_path / "outputs").glob("*/*/*/results.json")) + list(
            (tmp_path / "outputs").glob("*/multiruns/*/*/results.json"))
    seeds = re.search(r"seed=([\d,]+)", command)
    if " -m " in command and seeds is None:  # a sweep: as many runs as it chose to make, at least one
        assert results and all(path.is_file() for path in results), (command, results)
        return
    expected = len(seeds.group(1).split(",")) if " -m " in command else 1
    assert len(results) == expected and all(path.is_file() for path in results), (command, results)


@pytest.fixture(scope="module")
def finished_gpt_run(data_root, tmp_path_factory) -> Path:
    """The checkpoint of ``python -m manualbp.sample CHECKPOINT``: a short ``python train.py model=gpt`` run."""
    run = tmp_path_factory.mktemp("docs-gpt") / "run"
    result = run_train_py("model=gpt", "trainer.max_steps=50", "data.steps_per_epoch=25", "data.val_batches=5",
                          f"data.path={data_root / 'tinyshakespeare' / 'input.txt'}", f"hydra.run.dir={run}",
                          cwd=run.parent, env={DATA_ENV: str(data_root), **ONE_THREAD})
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def without_placeholder_options(command: str) -> str:
    """``[--start 0.7 0.25]`` kept as ``--start 0.7 0.25``; ``[--tokens N]``, ``[more images]`` dropped."""
    def option(match: re.Match) -> str:
        inside = match.group(1)
        concrete = inside.startswith("--") and not re.search(r"\b[A-Z]{1,}\b", inside.split(None, 1)[-1])
        return f" {inside}" if concrete else ""
    return " ".join(re.sub(r"\s*\[([^\]]*)\]", option, command).split())


def filled_words(command: str, data_root: Path, cwd: Path, request) -> list[str]:
    """The command's words with its placeholders filled in (files put into ``cwd``)."""
    command = without_placeholder_options(command)
    if re.search(r"RUN/|CHECKPOINT|CKPT|<time>|model\.ckpt", command):
        finished = request.getfixturevalue("finished_gpt_run" if "manualbp.sample" in command else "finished_mnist_run")
        checkpoint = str(finished / "checkpoints" / "last.ckpt")
        command = re.sub(r"outputs/\w+/runs/<time>/checkpoints/last\.ckpt", checkpoint, command)
        command = command.replace("RUN/", f"{finished}/")
    words = []
    for word in shlex.split(command):
        if word in ("CHECKPOINT", "CKPT"):
            word = checkpoint
        elif word == "image.png":
            shutil.copy(PAGES / "figures" / "seven.png", cwd / "image.png")
        elif word.endswith("=model.ckpt"):
            shutil.copy(checkpoint, cwd / "model.ckpt")
        elif word == "MODULE:FACTORY":
            word = "torchvision.models:resnet18"
        word = re.sub(r"=/data$", f"={data_root}", word)
        words.append(word)
    return words


def written_file(name: str) -> str:
    """The text of the block a page marks ``<!-- file: NAME -->``."""
    found = [block.code for page in PAGES.rglob("*.md") for block in blocks(page) if block.marker == f"file: {name}"]
    assert len(found) == 1, f"expected one block marked 'file: {name}' on the pages, found {len(found)}"
    return found[0]


def shown_output_after(command: str) -> str:
    """The text block that follows the bash block showing ``command``: the output the page promises."""
    for page in PAGES.rglob("*.md"):
        shown = blocks(page)
        for block, following in zip(shown, shown[1:], strict=False):
            if block.language == "bash" and command in " ".join(block.code.split()) and following.language == "text":
                return following.code
    raise AssertionError(f"no text block follows {command!r} on the pages")


@pytest.mark.slow
@pytest.mark.parametrize("command", OTHER_COMMANDS)
def test_documented_tool_command_runs_as_written(command, data_root, tmp_path, request):
    words = filled_words(command, data_root, tmp_path, request)
    if command.startswith("python -m manualbp.testing"):
        (tmp_path / "my_tanh.py").write_text(written_file("my_tanh.py"))
    if words[1] == "eval.py":
        words[1] = str(PROJECT_ROOT / "eval.py")
    environment = {**os.environ, DATA_ENV: str(data_root), **ONE_THREAD}
    result = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=600)
    output = f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, output
    if command.startswith("python -m manualbp.testing"):
        # the page's student tanh has the classic slip: the checker fails it (status 1) with the report shown
        assert result.returncode == 1, output
        assert result.stdout.splitlines()[0] == shown_output_after(command).splitlines()[0], output
        return
    if command.startswith(("python -m manualbp.coverage timm:", "python -m manualbp.coverage transformers:")):
        # a model people download: status 1 while an op of its code keeps PyTorch's backward; the page shows
        # the report's first line and the float64 gradient check, which must hold
        assert result.returncode in (0, 1), output
        assert result.stdout.splitlines()[0] == shown_output_after(command).splitlines()[0], output
        worst = re.search(r"every gradient \(norm-relative, \d+ parameters\) ≤ (\S+)", result.stdout)
        assert worst and float(worst.group(1)) <= 1e-8, output
        return
    assert result.returncode == 0, output
    if command.startswith("python eval.py"):
        assert len(list((tmp_path / "outputs" / "eval" / "runs").glob("*/results.json"))) == 1, output
    elif command.startswith("python -m manualbp.predict"):
        assert re.match(r"image\.png\s+\d ", result.stdout), output
    elif command.startswith("python -m manualbp.sample"):
        tokens = re.search(r"--tokens (\d+)", command)
        assert len(result.stdout) >= int(tokens.group(1)) if tokens else result.stdout.strip(), output
    elif command.startswith("python -m manualbp.coverage"):
        assert "60 of 60" in result.stdout, output
    elif command.startswith("python -m manualbp.demos.chain_rule"):
        assert "306" in result.stdout and "-310" in result.stdout, output
    elif command.startswith("python -m manualbp.demos.gradient_descent"):
        assert (tmp_path / "gradient_descent.png").is_file(), output
