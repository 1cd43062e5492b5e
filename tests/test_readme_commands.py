"""Every ``python train.py ...`` command the README shows runs as written.

The commands are read from README.md itself (its bash blocks and inline code), so a command added
there is tested here. They run in a fresh folder (nothing but what the command writes), with
``$MANUALBP_DATA`` pointing at small MNIST-format files the test writes, so that each takes seconds.
Only placeholders are substituted: ``RUN`` (a run folder this test makes first), ``/data`` (a
data root), ``my_text.txt`` (a text file this test writes) and ``a|b|c`` (one of the choices: the
first). The data root also holds ``tinyshakespeare/input.txt`` (what the download would put there:
this machine has no internet). One thing is added: a ``model=gpt`` command runs 50 of its 2,000
steps (``trainer.max_steps=50``), the rest being the same steps again.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from helpers import PROJECT_ROOT, run_train_py, write_mnist_files

from manualbp.training.data.mnist_files import DATA_ENV

README = PROJECT_ROOT / "README.md"


def readme_train_commands() -> list[str]:
    """The ``python train.py ...`` commands in README.md, in order, without trailing comments."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            match = re.search(r"python train\.py[^#\n]*", line)
            if match:
                commands.append(match.group(0).strip())
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += [span.strip() for span in re.findall(r"`(python train\.py[^`]*)`", prose)]
    return list(dict.fromkeys(commands))


COMMANDS = readme_train_commands()


def test_the_readme_shows_train_commands():
    assert len(COMMANDS) >= 10, COMMANDS
    assert any(command.startswith("python train.py -m ") for command in COMMANDS)


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
    result = run_train_py("model=mnist", f"hydra.run.dir={run}", cwd=run.parent, env={DATA_ENV: str(data_root)})
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
    return filled


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs_as_written(command, data_root, tmp_path, request):
    if "accelerator=gpu" in command and not torch.cuda.is_available():
        pytest.skip("the command asks for GPUs and this machine has none")
    args = arguments(command, data_root, request)
    result = run_train_py(*args, cwd=tmp_path, env={DATA_ENV: str(data_root)})
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
