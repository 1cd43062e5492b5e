"""``python -m manualbp.coverage``: a clean console, the modules convert left and why, and one line
with exit status 2 for whatever stops the report from being made."""

from __future__ import annotations

import subprocess
import sys

import pytest

import manualbp
from manualbp.coverage import main

MODELS = '''
import torch


def reflect_and_softsign():
    """Two modules convert leaves: a reflect-padded Conv2d, and Softsign (no manualbp twin)."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), torch.nn.Softsign(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 2))


def raises():
    raise RuntimeError("no weights here")


def not_a_model():
    return 3
'''


def test_the_command_prints_no_warning_and_says_why_modules_were_left(tmp_path):
    (tmp_path / "cov_models.py").write_text(MODELS)
    result = subprocess.run(
        [sys.executable, "-m", "manualbp.coverage", "cov_models:reflect_and_softsign", "--shape", "2,3,8,8"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": f"{tmp_path}:{manualbp.__path__[0]}/..", "PATH": "", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1, result.stdout + result.stderr  # Softsign keeps PyTorch's backward
    assert result.stderr == "", result.stderr  # no runpy "found in sys.modules" RuntimeWarning
    assert "left with PyTorch's backward by convert (2):" in result.stdout
    assert "0 (Conv2d: manualbp pads with zeros only, got padding_mode='reflect')" in result.stdout
    assert "1 (Softsign: no manualbp twin)" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["cov_models_{n}:raises"], "cov_models_{n}:raises() raised RuntimeError: no weights here: fix the factory"),
        (["cov_models_{n}:not_a_model"], "returned int, expected a torch.nn.Module or (model, example inputs)"),
        (["cov_models_{n}:reflect_and_softsign", "--shape", "2,5"], "the model raised NotImplementedError on inputs "
         "of shape (2, 5): Padding size 4 is not supported for 2D input tensor.: give --shape the sizes"),
        (["cov_models_{n}:no_such"], "module 'cov_models_{n}' has no 'no_such'"),
        (["cov_syntax_{n}:f"], "module 'cov_syntax_{n}' has a syntax error: "),
        (["cov_raising_{n}:f"], "importing module 'cov_raising_{n}' raised ZeroDivisionError: division by zero"),
        (["no_colon"], "expected MODULE:NAME"),
    ],
)
def test_what_stops_the_report_is_one_line_and_exit_2(args, message, tmp_path, monkeypatch, capsys):
    n = tmp_path.name.replace("-", "_")  # a module name of its own: no test sees another's import
    (tmp_path / f"cov_models_{n}.py").write_text(MODELS)
    (tmp_path / f"cov_syntax_{n}.py").write_text("def f(:\n    pass\n")
    (tmp_path / f"cov_raising_{n}.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main([arg.format(n=n) for arg in args]) == 2
    captured = capsys.readouterr()
    assert message.format(n=n) in captured.err and "Traceback" not in captured.err, captured.err
    assert len(captured.err.strip().splitlines()) == 1 and captured.out == ""


def test_the_library_names_stay_where_they_were():
    from manualbp.coverage import STRUCTURE, CoverageReport, backward_coverage

    assert manualbp.backward_coverage is backward_coverage and manualbp.CoverageReport is CoverageReport
    assert "ViewBackward" in STRUCTURE
