"""Check a hand-written backward: ``check_function(function, reference, inputs)``.

One call runs, in float64, every check manualbp runs on its own layers: values and gradients
against a PyTorch reference (every subset of inputs requiring grad; as given, batch size 1, extra
leading dimensions, non-contiguous), ``gradcheck`` (backward, forward-mode AD, batched),
``gradgradcheck`` (reverse over reverse, batched, forward over reverse), ``torch.func`` (vmap,
jacrev, jacfwd), inputs left unmodified, and optionally ``torch.compile``. On a failure it raises
``AssertionError`` with a readable report that names the kind of mistake when the evidence shows
one (transposed, a constant factor such as a missing 1/N, a flipped sign, no gradient, a wrong
shape, a wrong second order, an input modified in place)::

    from manualbp.testing import check_function
    check_function(MyTanh.apply, torch.tanh, (torch.randn(5, 4),))

From a shell: ``python -m manualbp.testing mymodule:my_tanh --reference torch.tanh --shape 5,4``.
"""

from manualbp.testing.check import check_function
from manualbp.testing.report import CheckResult, Errors, Report

__all__ = ["check_function", "Report", "CheckResult", "Errors"]
