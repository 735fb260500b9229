"""The grader (grade.py, checks.py) and the student's copy (exercises.py).

The classic mistakes are injected into the solution's batchnorm.py, one at a time, and the
grader must fail the exercise with the mistake's name. This file holds the solution's mistakes
and another solution, so exercises.py leaves it out of the student's copy.
"""
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import batchnorm
import checks
import exercises
import grade

REPO = Path(__file__).resolve().parent
SOLUTION = (REPO / "batchnorm.py").read_text()
_names = itertools.count()


def load(text, folder):
    """A batchnorm module from text, written to folder and imported under a name of its own."""
    name = f"batchnorm_variant_{next(_names)}"
    path = Path(folder) / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def injected(replacements):
    """The solution with each (old, new) applied; old must be there exactly once."""
    text = SOLUTION
    for old, new in replacements:
        assert text.count(old) == 1, f"the injection's target is no longer in batchnorm.py: {old}"
        text = text.replace(old, new)
    return text


CLOSED_FORM = SOLUTION[SOLUTION.index("                x_hat_coefficient = gamma_inv_std"):
                       SOLUTION.index("            grad_x = grad_x.to(ctx.input_dtype)")]
FORWARD = ("""        if not self.training:
            return self._normalize_with_running_stats(x)

        y, batch_mean, batch_var = BatchNormFunction.apply(x, self.weight, self.bias, self.eps,
                                                           self.detach_stats)
        self.update_running_estimates(batch_mean, batch_var, x.numel() // x.shape[1])
        return y""")
UPDATE = "        self.update_running_estimates(batch_mean, batch_var, x.numel() // x.shape[1])\n"

# name: (exercise, what the grader's line must say, [(solution's text, the mistake's)])
MISTAKES = {
    "biased running variance": (4, "running_var takes the biased σ²_B", [
        ("unbiased_var = batch_var * (m / (m - 1))", "unbiased_var = batch_var")]),
    "momentum convention reversed": (4, "the momentum convention is reversed", [
        ("self.running_mean.mul_(self.momentum).add_(batch_mean, alpha=1 - self.momentum)",
         "self.running_mean.mul_(1 - self.momentum).add_(batch_mean, alpha=self.momentum)"),
        ("self.running_var.mul_(self.momentum).add_(unbiased_var, alpha=1 - self.momentum)",
         "self.running_var.mul_(1 - self.momentum).add_(unbiased_var, alpha=self.momentum)")]),
    "batch statistics in eval": (4, "in eval mode it normalises with the batch's own statistics", [
        ("            return self._normalize_with_running_stats(x)\n",
         "            return BatchNormFunction.apply(x, self.weight, self.bias, self.eps)[0]\n")]),
    "running estimates not updated in training": (4, "not updated in training", [
        (UPDATE, "")]),
    "running estimates updated in eval": (4, "a forward in eval mode changed running_mean", [
        (FORWARD, FORWARD.replace(UPDATE, "").replace(
            "        return y", UPDATE + "        if self.training:\n            return y\n"
            "        return self._normalize_with_running_stats(x)").replace(
            "        if not self.training:\n            return self._normalize_with_running_stats"
            "(x)\n\n", ""))]),
    "by steps: no path through mu_B": (2, "the path through μ_B is missing", [
        ("grad_x = grad_x_hat * inv_std + grad_var * 2 * centred / m + grad_mu / m",
         "grad_x = grad_x_hat * inv_std + grad_var * 2 * centred / m")]),
    "by steps: no path through sigma_B^2": (2, "the path through σ²_B is missing", [
        ("grad_x = grad_x_hat * inv_std + grad_var * 2 * centred / m + grad_mu / m",
         "grad_x = grad_x_hat * inv_std + grad_mu / m")]),
    "closed form: no path through mu_B": (3, "the path through μ_B is missing", [
        ("                grad_x.sub_(gamma_inv_std * (grad_beta / m).view(stat_shape))"
         "   # - sum(g) / m\n", "")]),
    "closed form: no path through sigma_B^2": (3, "the path through σ²_B is missing", [
        ("grad_x = torch.mul(x_hat, x_hat_coefficient, out=g_x_hat)",
         "grad_x = torch.zeros_like(g_x_hat)")]),
    "closed form: neither path": (3, "the paths through μ_B and σ²_B are both missing", [
        ("            if ctx.detach_stats:", "            if True:")]),
    "by steps: sums over N alone": (2, "sum over N, H and W, not N alone", [
        ("total = lambda t: t.sum(dim=reduce_dims, keepdim=True)",
         "total = lambda t: t.sum(dim=0, keepdim=True)")]),
    "closed form: gamma's and beta's gradients over N alone": (
        3, "∂L/∂γ has shape (3, 5, 6), not (3,), for (N, C, H, W) input (4, 3, 5, 6): sum "
        "over N, H and W, not N alone", [
            ("grad_beta = g.sum(dim=reduce_dims)", "grad_beta = g.sum(dim=0)"),
            ("grad_gamma = g_x_hat.sum(dim=reduce_dims)", "grad_gamma = g_x_hat.sum(dim=0)"),
            ("(grad_gamma / -m).view(stat_shape)", "(grad_gamma / -m)"),
            ("(grad_beta / m).view(stat_shape)", "(grad_beta / m)")]),
    "closed form: dL/dx's sums over N alone": (
        3, "∂L/∂x differs from torch's by 5.6e+00 for (N, C, H, W) input (4, 3, 5, 6): it "
        "matches for (N, C) input: sum over N, H and W, not N alone", [
            (CLOSED_FORM, "                n = x_hat.shape[0]\n"
             "                grad_x = gamma_inv_std * (g - g.sum(0, keepdim=True) / n\n"
             "                                          - x_hat * (g * x_hat).sum(0, keepdim=True)"
             " / n)\n")]),
    "forward: statistics over N alone": (1, "the statistics are taken over N alone", [
        ("mean = x.mean(dim=reduce_dims, keepdim=True)", "mean = x.mean(dim=0, keepdim=True)"),
        ("var = x_hat.square().mean(dim=reduce_dims, keepdim=True)",
         "var = x_hat.square().mean(dim=0, keepdim=True)")]),
    "forward: eps outside the square root": (1, "ε is added outside the square root", [
        ("inv_std = torch.rsqrt(var + eps)", "inv_std = 1 / (var.sqrt() + eps)")]),
    "by steps: eps outside the square root": (2, "ε is added outside the square root", [
        ("inv_std = 1 / torch.sqrt(var + eps)", "inv_std = 1 / (torch.sqrt(var) + eps)")]),
    "eval: eps outside the square root": (4, "ε is added outside the square root", [
        ("scale = self.weight * torch.rsqrt(self.running_var + self.eps)",
         "scale = self.weight / (self.running_var.sqrt() + self.eps)")]),
    "forward: the unbiased variance": (1, "normalises with the unbiased variance", [
        ("var = x_hat.square().mean(dim=reduce_dims, keepdim=True)",
         "var = x_hat.square().sum(dim=reduce_dims, keepdim=True) / (x.numel() // x.shape[1] - 1)"
         )]),
    "the unbiased factor with m = N": (4, "the unbiased factor m/(m − 1) counts N alone", [
        (UPDATE, UPDATE.replace("x.numel() // x.shape[1]", "x.shape[0]"))]),
}


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    return tmp_path_factory.mktemp("variants")


@pytest.mark.parametrize("name", MISTAKES)
def test_the_grader_names_each_classic_mistake(name, variants):
    exercise, named, replacements = MISTAKES[name]
    module = load(injected(replacements), variants)
    status, message = checks.grade_exercise(module, exercise)
    assert status == "failed" and named in message, checks.line(exercise, status, message)
    assert "\n" not in message


def test_the_solution_passes_all_five():
    results = checks.grade_module(batchnorm)
    assert all(status == "passed" for status, _ in results.values()), results


def test_a_syntax_error_fails_every_exercise_in_one_line(tmp_path):
    path = tmp_path / "batchnorm.py"
    path.write_text(SOLUTION.replace("mean = x.mean(dim=reduce_dims, keepdim=True)",
                                     "mean = x.mean(dim=reduce_dims, keepdim=True"))
    results = grade.grade(path, time_limit=5)   # found before any process is started
    assert [status for _, _, status, _ in results] == ["failed"] * 5
    assert all("SyntaxError at line" in message and "never closed" in message
               for *_, message in results)


@pytest.mark.parametrize("old,new,said", [
    ("mean = x.mean(dim=reduce_dims, keepdim=True)", "mean = x.mean(dim=7, keepdim=True)",
     "IndexError: Dimension out of range (expected to be in range of [-2, 1], but got 7) at "
     "batchnorm_variant_"),
    ("inv_std = torch.rsqrt(var + eps)", "inv_std = torch.rsqrt(var - 100)",
     "BatchNormFunction.forward: y contains nan for (N, C) input (2, 5)"),
    ("return y.to(input_dtype), batch_mean", "return y.to(input_dtype)[:1], batch_mean",
     "BatchNormFunction.forward: y has shape (1, 5), not (2, 5), for (N, C) input (2, 5)"),
])
def test_an_exception_a_nan_or_a_wrong_shape_is_one_line(old, new, said, variants):
    status, message = checks.grade_exercise(load(injected([(old, new)]), variants), 1)
    assert status == "failed" and said in message and "\n" not in message


def test_an_endless_loop_fails_its_exercise_and_the_others_are_graded(tmp_path):
    """The student's code in a worker process, a time limit per exercise: exercise 4 loops
    (sleeping, so the test costs no CPU), a new worker grades exercise 5."""
    path = tmp_path / "batchnorm.py"
    path.write_text(SOLUTION.replace(
        '        """eq. 2.2, from a training batch',
        '        import time\n        while True:\n            time.sleep(0.05)\n'
        '        """eq. 2.2, from a training batch'))
    run = subprocess.run([sys.executable, str(REPO / "grade.py"), str(path), "--json",
                          "--time-limit", "4"], capture_output=True, text=True, timeout=300)
    result = json.loads(run.stdout)
    statuses = [e["status"] for e in result["exercises"]]
    assert statuses == ["passed"] * 3 + ["failed", "passed"] and run.returncode == 1
    assert result["exercises"][3]["message"].startswith("did not finish within 4 s")
    assert result["score"] == 4 and "Traceback" not in run.stderr

# ----------------------------------------------------------------------------- the student's copy

# Another solution, written differently, block by block in the order of batchnorm.py's blocks.
ALTERNATIVE = [
    # exercise 1
    """        m = x.numel() // x.shape[1]
        mean = x.sum(dim=reduce_dims, keepdim=True) / m
        var = ((x - mean) ** 2).sum(dim=reduce_dims, keepdim=True) / m
        inv_std = 1.0 / torch.sqrt(var + eps)
        x_hat = (x - mean) * inv_std
        y = weight.view(stat_shape) * x_hat + bias.view(stat_shape)
        ctx.save_for_backward(x_hat, weight, inv_std)""",
    # exercise 3
    """        grad_beta = g.sum(dim=reduce_dims)
        grad_gamma = (g * x_hat).sum(dim=reduce_dims)
        grad_x = None
        if ctx.needs_input_grad[0]:
            gamma = weight.view(stat_shape)
            if ctx.detach_stats:
                grad_x = gamma * inv_std * g
            else:
                mean_g = g.mean(dim=reduce_dims, keepdim=True)
                mean_g_x_hat = (g * x_hat).mean(dim=reduce_dims, keepdim=True)
                grad_x = gamma * inv_std * (g - mean_g - x_hat * mean_g_x_hat)
            grad_x = grad_x.to(ctx.input_dtype)""",
    # exercise 2
    """    mu = x.mean(dim=reduce_dims, keepdim=True)
    xc = x - mu
    var = (xc * xc).mean(dim=reduce_dims, keepdim=True)
    std = torch.sqrt(var + eps)
    x_hat = xc / std
    grad_bias = total(grad_y)
    grad_weight = total(grad_y * x_hat)
    d_x_hat = grad_y * gamma
    d_var = total(d_x_hat * xc) * (-0.5) / std ** 3
    d_mu = -total(d_x_hat) / std - 2 * d_var * total(xc) / m
    grad_x = d_x_hat / std + d_var * 2 * xc / m + d_mu / m""",
    # exercise 4: the layer's forward
    """        if self.training:
            y, batch_mean, batch_var = BatchNormFunction.apply(x, self.weight, self.bias,
                                                               self.eps, self.detach_stats)
            m = x.numel() // x.shape[1]
            self.update_running_estimates(batch_mean, batch_var, m)
            return y
        return self._normalize_with_running_stats(x)""",
    # exercise 4: eq. 2.2
    """        rho = self.momentum
        self.running_mean.copy_(rho * self.running_mean + (1 - rho) * batch_mean)
        self.running_var.copy_(rho * self.running_var + (1 - rho) * batch_var * m / (m - 1))""",
    # exercise 4: evaluation's scale and shift
    """        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        shift = self.bias - scale * self.running_mean
        return scale, shift""",
    # exercise 5
    """                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                shape = [-1] + [1] * (layer.weight.dim() - 1)
                layer.weight.copy_(layer.weight * scale.view(shape))
                old = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
                layer.bias = nn.Parameter((old - bn.running_mean) * scale + bn.bias)
                sequential[i + 1] = nn.Identity()""",
]
STUBBED = exercises.student_batchnorm(SOLUTION)


@pytest.fixture(scope="module")
def copy_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("students") / "copy"
    exercises.make(directory)
    return directory


def test_the_exercises_are_marked_in_batchnorm_py():
    found = exercises.blocks(SOLUTION)
    assert [exercise for *_, exercise, _, _ in found] == [1, 3, 2, 4, 4, 4, 5]
    assert len(found) == len(ALTERNATIVE)
    for first, last, exercise, what, _ in found:   # light: one comment line before and after
        assert last - first < 30 and len(what) < 95


def test_the_copy_has_the_repository_without_the_solution(copy_dir):
    tracked = set(exercises.tracked_files(REPO)) - exercises.TEACHER_ONLY
    copied = {str(p.relative_to(copy_dir)) for p in copy_dir.rglob("*") if p.is_file()}
    assert copied == tracked and not (copy_dir / ".git").exists()
    assert not (copy_dir / "test_exercises.py").exists()
    assert (copy_dir / "batchnorm.py").read_text() == STUBBED
    assert STUBBED.count("raise NotImplementedError(\"exercise ") == 7
    others = [(REPO / p).read_text() for p in tracked if p.endswith(".py") and p != "batchnorm.py"]
    assert exercises.traces(copy_dir, SOLUTION, others) == []
    for name in ("batch_norm_reference", "recalibrate"):   # rerouted: the docstring stays
        assert getattr(batchnorm, name).__doc__ in STUBBED


def test_the_copy_grades_not_done_yet(copy_dir):
    run = subprocess.run([sys.executable, "grade.py", "--json"], cwd=copy_dir,
                         capture_output=True, text=True, timeout=300)
    result = json.loads(run.stdout)
    assert run.returncode == 1 and result["score"] == 0 and run.stderr == ""
    assert [e["status"] for e in result["exercises"]] == ["not done yet"] * 5
    assert result["exercises"][2]["message"] == "waits for exercise 1"


def test_the_solution_pasted_back_is_the_solution():
    """Pasted back into the copy, the blocks give the solution's batchnorm.py, the rerouted
    functions aside (the scripts do not call them): a run is the solution's, bit for bit."""
    assert exercises.paste(STUBBED, exercises.block_texts(SOLUTION)) == exercises.reroute(SOLUTION)


def with_layers_of(module, model):
    """model with each BN layer replaced by module's of the same kind (no random numbers)."""
    for sequential in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        for i, layer in enumerate(sequential):
            if isinstance(layer, batchnorm.BatchNorm):
                sequential[i] = getattr(module, type(layer).__name__)(layer.num_features)
    return model


def test_another_solution_passes_and_trains_as_the_solution(variants, tiny_mnist, tmp_path,
                                                            train):
    module = load(exercises.paste(STUBBED, ALTERNATIVE), variants)
    assert all(status == "passed" for status, _ in checks.grade_module(module).values())
    import mlp
    import solver
    histories = []
    for name, build in (("solution", mlp.build_model),
                        ("other", lambda norm: with_layers_of(module, mlp.build_model(norm)))):
        argv = ["--bn", "--epochs", "1", "--batch-size", "50", "--data-dir", str(tiny_mnist),
                "--device", "cpu", "--out", str(tmp_path / name)]
        solver.train_run("mlp", build, mlp.config, solver.parse_args("mlp", mlp.config, argv))
        histories.append(json.loads((tmp_path / name / "history.json").read_text()))
    ours, other = histories
    assert abs(ours["test"]["acc"][-1] - other["test"]["acc"][-1]) <= 0.002
    assert ours["params"] == other["params"]
    torch.testing.assert_close(torch.tensor(other["train"]["loss"]),
                               torch.tensor(ours["train"]["loss"]), rtol=1e-4, atol=1e-5)


def test_the_copys_scripts_wait_for_the_exercises(copy_dir, variants, monkeypatch):
    """The copy's norms.norm_layers builds BN only once its exercises are done (the scripts
    print the SolverError's one line); the check draws no random numbers."""
    import plumbing
    spec = importlib.util.spec_from_file_location("copy_norms", copy_dir / "norms.py")
    for done, waits in ((0, 1), (1, 3), (3, 4)):   # blocks pasted: none, exercise 1, 1 to 3
        student = load(exercises.paste(STUBBED, exercises.block_texts(SOLUTION)[:done]
                                       + exercises.block_texts(STUBBED)[done:]), variants)
        monkeypatch.setitem(sys.modules, "batchnorm", student)
        monkeypatch.setattr(checks, "_ready", set())
        copy_norms = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(copy_norms)
        assert copy_norms.norm_layers("none", 4, rank=2) == []
        state = torch.get_rng_state()
        with pytest.raises(plumbing.SolverError, match=f"^exercise {waits} .* is not done yet "
                           "in batchnorm.py: --norm bn runs on exercises 1, 3 and 4"):
            copy_norms.norm_layers("bn", 4, rank=2)
        assert torch.equal(state, torch.get_rng_state())
    monkeypatch.setitem(sys.modules, "batchnorm", batchnorm)
    assert checks.first_not_done(batchnorm, tuple(checks.EXERCISES)) is None
    assert torch.equal(state, torch.get_rng_state())


def test_the_copys_tests_fail_only_for_unfinished_exercises(copy_dir):
    """In the copy, pytest: an exercise not done fails its first check with the grader's line,
    what needs it skips saying which exercise it waits for, the rest passes."""
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "-q", "-rfs",
                          "-p", "no:cacheprovider", "test_batchnorm.py", "-k",
                          "exercise1- or exercise3- or interface or float32"],
                         cwd=copy_dir, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, COLUMNS="300"))
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("1 failed, 1 passed, 13 skipped"), run.stdout[-3000:]
    assert ("FAILED test_batchnorm.py::test_exercise[exercise1-(2,5)] - Failed: exercise 1 "
            "(the forward pass with batch statistics): not done yet") in run.stdout
    assert "waits for exercise 1 (the forward pass with batch statistics)" in run.stdout
    assert "waits for exercise 4 (the running estimates and evaluation)" in run.stdout
