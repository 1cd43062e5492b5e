"""manualbp.testing, the public checker: correct Functions pass, and each kind of planted bug is
caught and named correctly in the report. Small shapes keep it fast."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import Function

import manualbp
import manualbp.functional as mf
from manualbp.testing import check_function
from manualbp.testing.__main__ import main as cli_main

DTYPE = torch.float64


def _randn(*shape, seed=0):
    return torch.randn(*shape, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))


def linear_inputs(out_features=3, batch=5):
    return _randn(batch, 4, seed=0), _randn(out_features, 4, seed=1), _randn(out_features, seed=2)


def failure(function, reference, inputs, **options) -> str:
    """The report check_function raises for a wrong Function."""
    with pytest.raises(AssertionError) as raised:
        check_function(function, reference, inputs, **options)
    return str(raised.value)


# ----------------------------------------------------------------------------------------------
# Correct Functions, written with torch ops only, as a user would
# ----------------------------------------------------------------------------------------------


class Tanh(Function):
    """y = tanh(x); δx = (1 − y²)·δy; jvp ẏ = (1 − y²)·ẋ."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return grad_output * (1 - output * output)

    @staticmethod
    def jvp(ctx, x_tangent):
        (output,) = ctx.saved_tensors
        return x_tangent * (1 - output * output)


def make_linear(grad_weight=lambda grad_rows, x_rows: grad_rows.t() @ x_rows, bias_gradient=True):
    """A linear Function Z = X Wᵀ + b; δX = δZ W, δW = ``grad_weight(δZ, X)`` (right: δZᵀX), δb = Σ δZ."""

    class Linear(Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x, weight, bias):
            return x @ weight.t() + bias

        @staticmethod
        def setup_context(ctx, inputs, output):
            x, weight, _ = inputs
            ctx.save_for_backward(x, weight)

        @staticmethod
        def backward(ctx, grad_output):
            x, weight = ctx.saved_tensors
            rows = grad_output.reshape(-1, weight.shape[0])
            grad_bias = rows.sum(0) if bias_gradient else None
            return grad_output @ weight, grad_weight(rows, x.reshape(-1, weight.shape[1])), grad_bias

    return Linear


Linear = make_linear()


def test_a_correct_function_passes_every_check():
    report = check_function(Linear.apply, TF.linear, linear_inputs())
    assert report.passed
    text = str(report)
    assert "FAILED" not in text and "PASSED  values vs reference" in text
    # No jvp: forward-mode checks are skipped, with the reason, and do not fail the report.
    assert report["gradcheck: forward-mode AD (jvp)"].status == "skipped"
    assert "the Function has no jvp" in report["gradcheck: forward-mode AD (jvp)"].note
    assert report["gradients vs reference (every requires-grad subset)"].passed
    assert report["torch.func.vmap vs the reference per sample"].passed


def test_a_function_with_a_jvp_passes_the_forward_mode_checks_too():
    report = check_function(Tanh.apply, torch.tanh, _randn(5, 4))
    skipped = [result.name for result in report.results if result.status == "skipped"]
    assert skipped == ["torch.compile(fullgraph=True) values and gradients"]


def test_a_module_is_checked_with_its_parameters_as_inputs():
    x = _randn(5, 4)
    report = check_function(manualbp.Linear(4, 3), torch.nn.Linear(4, 3), (x,))
    assert "parameter weight" in str(report) and "parameter bias" in str(report)
    # A plain reference gets the same parameters after the inputs: F.linear(x, weight, bias).
    assert check_function(manualbp.Linear(4, 3), TF.linear, (x,)).passed


def test_non_tensor_arguments_are_passed_through():
    report = check_function(lambda x, scale: Tanh.apply(x) * scale, lambda x, scale: torch.tanh(x) * scale,
                            (_randn(5, 4), 2.0))
    assert "input 1 (scale) = 2.0" in str(report)


def test_inputs_the_reference_rejects_are_an_error_not_a_pass():
    with pytest.raises(ValueError, match="the reference rejects it"):
        check_function(Linear.apply, TF.linear, (_randn(5, 4), _randn(3, 2), _randn(3)), layouts=("as_given",))


def test_inputs_are_converted_to_float64_and_may_be_made_by_a_callable():
    report = check_function(Tanh.apply, torch.tanh, lambda: (torch.randn(3, 2, dtype=torch.float32),), seed=3)
    assert "input 0 (x) (3, 2) float64 (seed 3)" in str(report)


# ----------------------------------------------------------------------------------------------
# Planted bugs, each named correctly in the report
# ----------------------------------------------------------------------------------------------


# δW = XᵀδZ: the slides' formula for W stored (in, out), applied to torch's (out, in) weight.
LinearTransposedGradWeight = make_linear(grad_weight=lambda grad_rows, x_rows: x_rows.t() @ grad_rows)


def test_a_transposed_weight_gradient_is_named():
    report = failure(LinearTransposedGradWeight.apply, TF.linear, linear_inputs(out_features=4))  # square W
    assert "input 1 (weight): the gradient equals the reference's transposed" in report


def test_a_gradient_of_the_wrong_shape_is_named_with_both_shapes():
    report = failure(LinearTransposedGradWeight.apply, TF.linear, linear_inputs(out_features=3))
    assert "gradient for input 1 (weight): the gradient has the wrong shape: expected (3, 4), got (4, 3)" in report
    assert "transposed" in report


LinearWithoutBiasGradient = make_linear(bias_gradient=False)


def test_a_none_gradient_is_named():
    report = failure(LinearWithoutBiasGradient.apply, TF.linear, linear_inputs())
    assert "input 2 (bias): no gradient reached it: backward returned None" in report


def make_mean_squared_error(grad_pred=lambda pred, target: (pred - target) / pred.shape[0]):
    """L = (1/N) Σ ½‖p − t‖²; δp = ``grad_pred(p, t)``·g (right: (p − t)/N), δt = −δp."""

    class MeanSquaredError(Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(pred, target):
            return mean_squared_error(pred, target)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, grad_output):
            pred, target = ctx.saved_tensors
            gradient = grad_pred(pred, target) * grad_output
            return gradient, -gradient

    return MeanSquaredError


def mean_squared_error(pred, target):
    return 0.5 * ((pred - target) ** 2).sum() / pred.shape[0]


MeanSquaredError = make_mean_squared_error()
MeanSquaredErrorWithoutOneOverN = make_mean_squared_error(lambda pred, target: pred - target)
MeanSquaredErrorWithFlippedSign = make_mean_squared_error(lambda pred, target: (target - pred) / pred.shape[0])


def test_a_missing_one_over_n_is_named():
    assert check_function(MeanSquaredError.apply, mean_squared_error, (_randn(5, 3), _randn(5, 3, seed=1))).passed
    report = failure(MeanSquaredErrorWithoutOneOverN.apply, mean_squared_error, (_randn(5, 3), _randn(5, 3, seed=1)))
    assert "off by a constant factor: the gradient is 5 × the reference's" in report
    assert "a missing or extra 1/N?" in report


def test_a_flipped_sign_is_named():
    report = failure(MeanSquaredErrorWithFlippedSign.apply, mean_squared_error, (_randn(5, 3), _randn(5, 3, seed=1)))
    assert "input 0 (pred): the sign is flipped" in report
    assert "input 1 (target): the sign is flipped" in report


class SigmoidMissingOneMinusSigma(Function):
    """δa = σ·δz: the (1 − σ) of σ' = σ(1 − σ) forgotten."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a):
        return torch.sigmoid(a)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return output * grad_output


def test_a_missing_derivative_factor_is_named_with_where_the_mismatch_is_largest():
    report = failure(SigmoidMissingOneMinusSigma.apply, torch.sigmoid, _randn(5, 4))
    assert "input 0 (a): the largest mismatch is at input 0 (a)[" in report
    assert "the ratio to the reference is not constant" in report
    assert "a factor of the derivative missing or wrong" in report
    assert "FAILED  gradcheck: backward vs finite differences" in report  # finite differences agree


def make_tanh(grad_input):
    """y = tanh(x) with δx = ``grad_input(y, δy)`` (right: (1 − y²)·δy)."""

    class Tanh(Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return torch.tanh(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx, grad_output):
            (output,) = ctx.saved_tensors
            return grad_input(output, grad_output)

    return Tanh


TanhInFloat32 = make_tanh(lambda y, grad_y: ((1 - y * y) * grad_y).float())  # autograd casts it back to float64
TanhNoisy = make_tanh(lambda y, grad_y: (1 - y * y) * grad_y * (1 + 0.1 * torch.rand_like(y)))


def test_a_float32_gradient_for_a_float64_input_is_a_dtype_mismatch():
    report = failure(TanhInFloat32.apply, torch.tanh, _randn(5, 4))
    assert ("input 0 (x): a dtype mismatch: the gradient has float32 precision where the reference's is float64: "
            "backward computed or returned float32 for float64 inputs") in report
    assert "constant factor" not in report


def test_a_float32_output_for_float64_inputs_is_a_dtype_mismatch():
    report = failure(lambda x: torch.tanh(x).float(), torch.tanh, _randn(5, 4), layouts=["as_given"])
    assert "output: a dtype mismatch: the value has float32 precision where the reference's is float64" in report
    assert "constant factor" not in report
    # a round trip through float32 in the middle: float64 values with float32's precision
    report = failure(lambda x: torch.tanh(x).float().double(), torch.tanh, _randn(5, 4), layouts=["as_given"])
    assert "input 0 (x): equals the reference only to about float32's precision" in report
    assert "constant factor" not in report


def test_a_non_deterministic_backward_is_named_and_nothing_else_is_guessed():
    report = failure(TanhNoisy.apply, torch.tanh, _randn(5, 4))
    assert ("-> backward is not deterministic: two runs on the same inputs and the same grad_output gave different "
            "gradients for input 0 (x)") in report
    diagnoses = [line for line in report.splitlines() if line.strip().startswith("->")]
    assert len(diagnoses) >= 3 and all("backward is not deterministic" in line for line in diagnoses), diagnoses
    assert "a factor of the derivative missing" not in report and "wrong too" not in report


class SigmoidWithOutputOnCtx(Function):
    """Right first derivative, but σ is kept as a detached ctx attribute, not save_for_backward:
    double backward misses the σ'' term."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a):
        return torch.sigmoid(a)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.output = output.detach()

    @staticmethod
    def backward(ctx, grad_output):
        return ctx.output * (1 - ctx.output) * grad_output


def test_an_intermediate_smuggled_through_ctx_is_named_by_the_second_order_checks():
    with pytest.raises(AssertionError) as raised:
        check_function(SigmoidWithOutputOnCtx.apply, torch.sigmoid, _randn(5, 4))
    report = str(raised.value)
    assert "PASSED  gradients vs reference" in report and "PASSED  gradcheck: backward vs finite differences" in report
    assert "FAILED  gradgradcheck: reverse over reverse" in report
    hint = "first order is right but second order is wrong: an intermediate kept on ctx instead of save_for_backward?"
    assert hint in report


class TanhWithWrongJvp(Tanh):
    """Right backward; the jvp forgets the derivative: ẏ = ẋ."""

    @staticmethod
    def jvp(ctx, x_tangent):
        return x_tangent.clone()


def test_a_wrong_jvp_is_named_by_the_forward_mode_checks():
    report = failure(TanhWithWrongJvp.apply, torch.tanh, _randn(5, 4))
    assert "PASSED  gradients vs reference" in report
    assert "FAILED  gradcheck: forward-mode AD (jvp)" in report and "FAILED  torch.func.jacfwd" in report
    assert "backward is right but forward mode is wrong: check the jvp" in report


class ReLUInPlace(Function):
    """Right values and gradient, but the forward clamps its input in place."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clamp_(min=0).clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return grad_output * (output > 0)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # vmap over clamp_
def test_an_input_modified_in_place_is_named():
    report = failure(ReLUInPlace.apply, TF.relu, _randn(5, 4))
    assert "FAILED  inputs and grad_output left unmodified" in report.splitlines()[3]  # the first failure listed
    assert "input 0 (x) was modified in place by the forward" in report


class TanhScalingGradOutputInPlace(Tanh):
    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return grad_output.mul_(1 - output * output)


def test_a_grad_output_modified_in_place_is_named():
    report = failure(TanhScalingGradOutputInPlace.apply, torch.tanh, _randn(5, 4))
    assert "grad_output was modified in place by the backward" in report


def test_the_report_is_readable():
    report = failure(MeanSquaredErrorWithoutOneOverN.apply, mean_squared_error, (_randn(5, 3), _randn(5, 3, seed=1)))
    first = report.splitlines()[0]
    assert first.startswith("check_function(MeanSquaredError.apply vs mean_squared_error): FAILED (")
    assert "inputs: input 0 (pred) (5, 3) float64, input 1 (target) (5, 3) float64 (seed 0)" in report
    assert "largest abs error" in report and "largest rel error" in report and "at input 0 (pred)[" in report
    assert "-> " in report  # diagnoses are set apart


# ----------------------------------------------------------------------------------------------
# The command line and the import boundary
# ----------------------------------------------------------------------------------------------

STUDENT_MODULE = '''
import torch

class Tanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return grad_output * (1 - y {op} y)

tanh = Tanh.apply
'''


def _cli(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "manualbp.testing", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": f"{tmp_path}:{manualbp.__path__[0]}/..", "PATH": "", "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_the_command_line_passes_and_fails_with_the_exit_code(tmp_path):
    (tmp_path / "good_tanh.py").write_text(STUDENT_MODULE.format(op="*"))
    (tmp_path / "bad_tanh.py").write_text(STUDENT_MODULE.format(op="+"))
    good = _cli(tmp_path, "good_tanh:tanh", "--reference", "torch.tanh", "--shape", "3,2")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "check_function(Tanh.apply vs torch.tanh): passed" in good.stdout
    bad = _cli(tmp_path, "bad_tanh:Tanh", "--reference", "torch.tanh", "--shape", "3,2", "--seed", "1")
    assert bad.returncode == 1
    assert "FAILED  gradients vs reference" in bad.stdout and "(seed 1)" in bad.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["no_such_module:f", "--reference", "torch.tanh", "--shape", "3"], "cannot import module 'no_such_module'"),
        (["torch:no_such_name", "--reference", "torch.tanh", "--shape", "3"], "module 'torch' has no 'no_such_name'"),
        (["torch.tanh", "--reference", "torch.tanh", "--shape", "3"], "expected MODULE:NAME"),
        (["torch:tanh", "--reference", "torch.no_such", "--shape", "3"], "'torch' has no 'no_such'"),
        (["torch:tanh", "--reference", "torch.tanh", "--shape", "3,x"], "bad shape '3,x'"),
        (["torch:tanh", "--reference", "torch.tanh", "--shape", "0"], "bad shape '0'"),
    ],
)
def test_the_command_line_says_what_is_wrong_with_its_arguments(args, message, capsys):
    with pytest.raises(SystemExit) if "--shape" in args and "bad shape" in message else _no_exit():
        code = cli_main(args)
        assert code == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_manualbp_testing_imports_no_trainer_dependencies():
    code = textwrap.dedent(
        """
        import sys
        import manualbp.testing
        heavy = [name for name in ("lightning", "pytorch_lightning", "hydra", "torchvision", "matplotlib")
                 if name in sys.modules]
        assert not heavy, heavy
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": f"{manualbp.__path__[0]}/..", "PATH": ""})
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_torch_compile_is_checked_when_asked():
    report = check_function(mf.linear, TF.linear, linear_inputs(), compile=True, layouts=("as_given",))
    assert report["torch.compile(fullgraph=True) values and gradients"].passed


# ----------------------------------------------------------------------------------------------
# What a student meets first: a 2-D-only formula, inputs outside the domain, a NaN, a broken module
# ----------------------------------------------------------------------------------------------

GOOD_LINEAR = '''
import torch


class GoodLinear(torch.autograd.Function):
    """The slides' Z = XW + b for 2-D X, W stored (in, out): dX = dZ Wᵀ, dW = Xᵀ dZ, db = Σ dZ."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return x @ w + b

    @staticmethod
    def backward(ctx, dz):
        x, w = ctx.saved_tensors
        return dz @ w.T, x.T @ dz, dz.sum(0)


def reference(x, w, b):
    return x @ w + b
'''


@pytest.mark.slow
def test_a_slide_formula_for_2d_inputs_passes_and_its_unsupported_layout_is_named(tmp_path):
    (tmp_path / "goodlinear.py").write_text(GOOD_LINEAR)
    result = _cli(tmp_path, "goodlinear:GoodLinear", "--reference", "goodlinear.reference",
                  "--shape", "5,3", "--shape", "3,4", "--shape", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout.splitlines()[0] and "FAILED" not in result.stdout
    assert "not supported by the function, so not checked: extra leading dims (RuntimeError:" in result.stdout
    assert "--layouts as_given,batch_size_1,non_contiguous" in result.stdout
    assert "wrong too" not in result.stdout
    assert "Warning" not in result.stderr, result.stderr  # x.T on 3-D, torch.jit.script: not the student's
    # the option the report suggests: the layout is then not tried at all
    asked = _cli(tmp_path, "goodlinear:GoodLinear", "--reference", "goodlinear.reference", "--shape", "5,3",
                 "--shape", "3,4", "--shape", "4", "--layouts", "as_given,non_contiguous")
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert "  layouts: as given, non-contiguous\n" in asked.stdout and "so not checked" not in asked.stdout


def test_a_layout_the_function_cannot_run_is_not_supported_rather_than_failed():
    slide_linear = lambda x, w, b: SlideLinear.apply(x, w, b)  # noqa: E731
    report = check_function(slide_linear, lambda x, w, b: x @ w + b, (_randn(5, 3), _randn(3, 4, seed=1), _randn(4)))
    assert report.passed
    assert "not supported by the function, so not checked: extra leading dims" in str(report)
    assert "layouts: as given, batch size 1, non-contiguous" in str(report)
    # layouts asked for by name must all work: manualbp's own layers are held to that
    with pytest.raises(AssertionError, match="extra leading dims"):
        check_function(slide_linear, lambda x, w, b: x @ w + b, (_randn(5, 3), _randn(3, 4, seed=1), _randn(4)),
                       layouts=("as_given", "leading_dims"))
    # a layout with the same shapes (non-contiguous) is not a matter of support: raising there fails
    with pytest.raises(AssertionError, match="the function raises on: non-contiguous"):
        check_function(tanh_of_contiguous_only, torch.tanh, _randn(5, 4))


def tanh_of_contiguous_only(x):
    if not x.is_contiguous():
        raise RuntimeError("view size is not compatible with input tensor's size and stride")
    return torch.tanh(x)


class SlideLinear(Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return x @ w + b

    @staticmethod
    def backward(ctx, dz):
        x, w = ctx.saved_tensors
        return dz @ w.t(), x.t() @ dz, dz.sum(0)


class TanhWithNaNGradient(Tanh):
    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return grad_output * (1 - output * output) * ((output - output) / (output - output))  # 0/0


def test_a_nan_gradient_is_named():
    report = failure(TanhWithNaNGradient.apply, torch.tanh, _randn(5, 4))
    assert "input 0 (x): NaN in the gradient at input 0 (x)[0, 0] (20 of 20 elements" in report
    assert "atol" not in report


class Sqrt(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.sqrt(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return grad_output / (2 * output)


def test_inputs_outside_the_domain_are_an_error_that_says_how_to_draw_them_inside():
    with pytest.raises(ValueError, match="outside the function's domain .*--low 0.1 --high 2"):
        check_function(Sqrt.apply, torch.sqrt, _randn(5, 4))
    assert check_function(Sqrt.apply, torch.sqrt, _randn(5, 4).abs() + 0.1).passed


def test_the_command_line_draws_inputs_in_the_range_asked(capsys):
    assert cli_main(["tests.test_testing:Sqrt", "--reference", "torch.sqrt", "--shape", "5,4"]) == 2
    assert "outside the function's domain" in capsys.readouterr().err
    assert cli_main(["tests.test_testing:Sqrt", "--reference", "torch.sqrt", "--shape", "5,4", "--positive"]) == 0
    assert cli_main(["tests.test_testing:Sqrt", "--reference", "torch.sqrt", "--shape", "5,4",
                     "--low", "0.5", "--high", "3"]) == 0
    assert cli_main(["tests.test_testing:Sqrt", "--reference", "torch.sqrt", "--shape", "5,4",
                     "--low", "3", "--high", "1"]) == 2
    assert "expected low < high" in capsys.readouterr().err


@pytest.mark.parametrize(
    "source, message",
    [
        ("def f(x:\n    return x\n", "has a syntax error: "),
        ("raise RuntimeError('no data here')\n", "importing module 'broken' raised RuntimeError: no data here"),
        ("import no_such_dependency\n", "importing module 'broken' failed: No module named 'no_such_dependency'"),
        ("import torch\nclass M(torch.nn.Module):\n    def __init__(self):\n        raise ValueError('bad size')\n"
         "f = M\n", "broken:f() raised ValueError: bad size"),
    ],
)
def test_a_broken_user_module_is_one_line_and_exit_2(tmp_path, source, message):
    (tmp_path / "broken.py").write_text(source)
    result = _cli(tmp_path, "broken:f", "--reference", "torch.tanh", "--shape", "3")
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_shapes_the_reference_rejects_are_one_line_and_exit_2(capsys):
    assert cli_main(["torch:tanh", "--reference", "torch.nn.functional.linear", "--shape", "3,2", "--shape", "4"]) == 2
    error = capsys.readouterr().err
    assert "the reference rejects it" in error and "Traceback" not in error


# ----------------------------------------------------------------------------------------------
# Hints that point the right way
# ----------------------------------------------------------------------------------------------


class SlideLinearWithTorchsWeightGradient(SlideLinear):
    """Z = XW + b with W (in, out), as on the slides, but δW = δZᵀX: torch's formula, the wrong one here."""

    @staticmethod
    def backward(ctx, dz):
        x, w = ctx.saved_tensors
        return dz @ w.t(), dz.t() @ x, dz.sum(0)


def test_a_transposed_weight_gradient_hint_follows_how_the_weight_is_stored():
    slides = lambda x, w, b: x @ w + b  # noqa: E731
    inputs = (_randn(5, 3), _randn(3, 4, seed=1), _randn(4))
    report = failure(SlideLinearWithTorchsWeightGradient.apply, slides, inputs, layouts=("as_given",))
    assert "expected (3, 4), got (4, 3)" in report
    assert "δW = δZᵀX where W stored (in, out), as on the slides (Z = XW), needs XᵀδZ" in report
    assert "torch's (out, in) layout" not in report
    # torch's layout, the slides' formula: the other way round
    report = failure(LinearTransposedGradWeight.apply, TF.linear, linear_inputs(out_features=3))
    assert "δW = XᵀδZ where torch's (out, in) layout (Z = XWᵀ) needs δZᵀX" in report




class MeanOfSquaresWithoutTwoOverN(Function):
    """L = mean((ŷ − y)²) over all N elements; δŷ = (ŷ − y)·g: the 2/N dropped; y, the target, gets None."""

    @staticmethod
    def forward(ctx, yhat, y):
        ctx.save_for_backward(yhat, y)
        return ((yhat - y) ** 2).mean()

    @staticmethod
    def backward(ctx, grad_output):
        yhat, y = ctx.saved_tensors
        return grad_output * (yhat - y), None


def test_a_factor_is_named_in_terms_of_n_and_a_target_without_gradient_is_not_flagged():
    report = failure(MeanOfSquaresWithoutTwoOverN.apply, lambda yhat, y: ((yhat - y) ** 2).mean(),
                     (_randn(8, 3), _randn(8, 3, seed=1)), layouts=("as_given",))
    assert "the gradient is 12 × the reference's (12 = N/2, N = 24 the number of elements: a missing 2/N?" in report
    assert "input 1 (y): no gradient reached it" not in report
    assert "not differentiated, its gradient not checked: input 1 (y)" in report
    # asked for: the target's gradient is checked, and its None is named
    report = failure(MeanOfSquaresWithoutTwoOverN.apply, lambda yhat, y: ((yhat - y) ** 2).mean(),
                     (_randn(8, 3), _randn(8, 3, seed=1)), layouts=("as_given",), no_grad=())
    assert "input 1 (y): no gradient reached it" in report


def test_checks_that_fail_with_the_same_diagnosis_are_grouped_under_it():
    report = failure(make_tanh(lambda y, grad_y: grad_y * (1 - y)).apply, torch.tanh, _randn(5, 4))
    diagnoses = [line for line in report.splitlines() if line.strip().startswith("->")]
    assert len(diagnoses) == len(set(diagnoses)), report  # each said once
    lines = report.splitlines()
    follows = lines.index("        -> the first-order gradients are wrong too: fix those first, this follows from them")
    assert [line.split("[")[0].strip() for line in lines[follows - 3:follows]] == [
        "FAILED  second-order gradients vs reference (double backward)",
        "FAILED  gradgradcheck: reverse over reverse",
        "FAILED  gradgradcheck: batched double backward (vmap over double backward)",
    ], report
