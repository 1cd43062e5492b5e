"""Peak memory of one forward + backward of every manualbp Function against PyTorch's own ops,
read from the CPU allocator (``manualbp.bench.memory``): deterministic at a small size, so it is a
test; ``python -m manualbp.bench --memory`` prints the same at 50k rows."""

from __future__ import annotations

import pytest
import torch

from manualbp.bench import memory

ROWS = 1000
ROW_SIZED = 8 * ROWS  # slack for (N, 1) or scalar temporaries (e.g. g/N): 8 kB against megabytes
# Known and documented: sigmoid, tanh and ELU's backward formulas run as separate elementwise
# ops (one temporary of the input's size) where PyTorch has one fused kernel; cross-entropy with
# class indices keeps softmax, the one-hot rows and yp − y at once. Fusing them would mean calling
# PyTorch's own backward kernels or in-place ops that break NaN/inf parity or torch.func.
OVER_BY_ONE_TEMPORARY = {"sigmoid", "tanh", "elu", "softmax_cross_entropy, class indices"}


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, marks=pytest.mark.xfail(strict=True, reason="one extra temporary, see above"))
     if case.name in OVER_BY_ONE_TEMPORARY else case for case in memory.CASES],
    ids=lambda case: case.name,
)
def test_peak_memory_is_at_most_torchs(case):
    torch.manual_seed(0)
    ours, theirs = case.peaks(ROWS)
    assert theirs > 0
    assert ours <= theirs + ROW_SIZED, f"{case.name}: manualbp peaks at {ours:,} bytes, PyTorch at {theirs:,}"


def test_peak_bytes_sees_a_temporary_freed_inside_the_run():
    x = torch.randn(1000, 1000)  # 4 MB
    assert memory.peak_bytes(lambda: (x * 2).sum()) >= 4_000_000  # x * 2 lives only inside
    assert memory.peak_bytes(lambda: x.sum()) < 1000


def test_memory_bench_runs_from_the_command_line(capsys):
    from manualbp.bench.__main__ import main

    main(["--memory", "200"])
    assert "| linear_relu, input needs no grad |" in capsys.readouterr().out
