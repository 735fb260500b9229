"""The checks of batchnorm.py's five exercises, one set for the test suite and for grade.py.

Every check takes the batchnorm module to check (the solution, or a student's batchnorm.py) and
compares it with torch in float64: torch.nn.functional.batch_norm and its autograd for the
forward and the backward, torch.nn.BatchNorm1d/2d(momentum=1 - momentum) for the running
estimates and evaluation, torch.nn.utils.fusion for folding. A check that fails raises
CheckFailed with one sentence a student understands; the classic mistakes are named from what
the code does (its outputs, gradients and running estimates), never from its text.

    CASES                  (exercise, name, check) for every check, in grading order
    grade_exercise(m, n)   (status, message) of exercise n: "passed", "not done yet", "failed"
    grade_module(m)        every exercise's result, in-process (grade.py adds time limits)
    line(n, status, msg)   the grader's line for an exercise
    first_not_done(m, ns)  (n, message) of the first of exercises ns whose stub still raises
    require_exercises(norm)   in the student's copy: a model with `norm` waits for its exercises

The expected values come from torch's own functions, so this file holds no solution: the
student's copy (exercises.py) keeps it as it is.
"""
import re
import traceback

import torch
import torch.nn.functional as F
from torch import nn

EXERCISES = {
    1: "the forward pass with batch statistics",
    2: "the backward pass one intermediate at a time",
    3: "the closed-form backward",
    4: "the running estimates and evaluation",
    5: "folding BN into the layer before it",
}
# What a check of exercise n builds on, for the note added to its failure when that one fails too.
BUILDS_ON = {3: (1, "its forward saves what this backward reads"),
             4: (1, "the layer's training output is BatchNormFunction's"),
             5: (4, "fold_batchnorm may use eval_scale_and_shift")}
EPS = 1e-5
TOL = dict(rtol=1e-9, atol=1e-9)


class CheckFailed(AssertionError):
    """A failed check: its message is one sentence that says what differs and, where the
    behaviour shows it, which mistake makes it differ."""


# ----------------------------------------------------------------------------- helpers

def layout(x):
    return "(N, C)" if x.dim() == 2 else "(N, C, H, W)"


def describe(x):
    return f"for {layout(x)} input {tuple(x.shape)}"


def reduce_dims(x):
    return [0] + list(range(2, x.dim()))


def stat_view(x):
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


def data(shape, seed):
    """x (each channel its own scale and shift), gamma, beta and an upstream gradient g."""
    gen = torch.Generator().manual_seed(seed)
    c, view = shape[1], [1, shape[1]] + [1] * (len(shape) - 2)
    scale = torch.linspace(0.5, 3, c, dtype=torch.float64).view(view)
    shift = torch.linspace(-2, 2, c, dtype=torch.float64).view(view)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift
    gamma = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
    beta = torch.randn(c, generator=gen, dtype=torch.float64)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    return x, gamma, beta, g


def close(actual, expected):
    return (isinstance(actual, torch.Tensor) and actual.shape == expected.shape
            and bool(torch.isfinite(actual).all())
            and torch.allclose(actual.double(), expected.double(), **TOL))


def gap(actual, expected):
    return (actual.double() - expected.double()).abs().max().item()


def tensor(value, what):
    """value, which must be a tensor: otherwise a sentence saying what it was."""
    if not isinstance(value, torch.Tensor):
        kind = f"a tuple of {len(value)}" if isinstance(value, tuple) else type(value).__name__
        raise CheckFailed(f"{what} is {kind}, not a tensor")
    return value


def outputs(value, count, what):
    if not isinstance(value, (tuple, list)) or len(value) < count:
        kind = (f"{len(value)} values" if isinstance(value, (tuple, list))
                else type(value).__name__)
        raise CheckFailed(f"{what} returns {kind}, not the {count} it must return")
    return value


def same_shape(actual, expected_shape, what, x=None):
    if tuple(actual.shape) != tuple(expected_shape):
        raise CheckFailed(f"{what} has shape {tuple(actual.shape)}, not {tuple(expected_shape)}"
                          + (f", {describe(x)}" if x is not None else ""))


def finite(actual, what, x=None):
    if not torch.isfinite(actual).all():
        kind = "nan" if torch.isnan(actual).any() else "inf"
        raise CheckFailed(f"{what} contains {kind}" + (f" {describe(x)}" if x is not None else ""))


def expect(actual, expected, what, x=None, reason=None, against="torch's"):
    """actual equal to expected in float64, or CheckFailed saying by how much it differs (and,
    where reason() names it, why)."""
    actual = tensor(actual, what)
    same_shape(actual, expected.shape, what, x)
    finite(actual, what, x)
    if not torch.allclose(actual.double(), expected.double(), **TOL):
        found = reason() if callable(reason) else reason
        raise CheckFailed(f"{what} differs from {against} by {gap(actual, expected):.1e}"
                          + (f" {describe(x)}" if x is not None else "")
                          + (f": {found}" if found else ""))


def quietly_passes(check, module):
    """Whether check(module) passes; used to say that (N, C) input works where (N, C, H, W)
    does not."""
    try:
        check(module)
    except Exception:
        return False
    return True

# ----------------------------------------------------------------------------- torch's answers

def torch_forward(x, gamma, beta, eps=EPS):
    return F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)


def torch_x_hat(x):
    return F.batch_norm(x, None, None, None, None, training=True, eps=EPS)


def biased_var(x):
    return torch.var(x, dim=reduce_dims(x), correction=0)


def per_channel_eps(eps):
    """torch's forward with its own eps per channel: how a mistake that changes only what
    sigma^2 + eps becomes (eps outside the root, the unbiased variance) looks from outside."""
    def forward(x, gamma, beta, eps_=None):
        return torch.cat([F.batch_norm(x[:, c:c + 1], None, None, gamma[c:c + 1],
                                       beta[c:c + 1], training=True, eps=float(e))
                          for c, e in enumerate(eps)], dim=1)
    return forward


def over_n_alone(x, gamma, beta, eps=EPS):
    """torch's forward with the statistics of each (c, h, w) over N alone."""
    n, per = x.shape[0], x[0, 0].numel()
    if n < 2:   # one value per position: x_hat = 0, y = beta
        return beta.view(stat_view(x)).expand_as(x)
    y = F.batch_norm(x.reshape(n, -1), None, None, gamma.repeat_interleave(per),
                     beta.repeat_interleave(per), training=True, eps=eps)
    return y.view(x.shape)


def direct_path_only(x, gamma, beta, eps=EPS):
    """torch's forward with mu_B and sigma_B^2 as constants: the gradient of the direct path."""
    var, mean = torch.var_mean(x.detach(), dim=reduce_dims(x), correction=0)
    return F.batch_norm(x, mean, var, gamma, beta, training=False, eps=eps)


def torch_grads(x, gamma, beta, g, forward=torch_forward):
    leaves = [t.detach().clone().requires_grad_() for t in (x, gamma, beta)]
    return torch.autograd.grad(forward(*leaves), leaves, g)

# ----------------------------------------------------------------------------- the mistakes

EPS_OUTSIDE = "ε is added outside the square root: divide by √(σ² + ε), not by √σ² + ε"
UNBIASED_FORWARD = ("it normalises with the unbiased variance (a sum divided by m − 1); eq. 2.1 "
                    "divides by m (torch.var's default is the unbiased one)")
N_ALONE = ("the statistics are taken over N alone; for (N, C, H, W) input take them over N, H "
           "and W (stat_shape_and_dims's reduce_dims)")
SUM_N_ALONE = "sum over N, H and W, not N alone"


def sigma_models(x):
    """(reason, per-channel eps) of the mistakes that change only the root of sigma^2 + eps."""
    var, m = biased_var(x), x.numel() // x.shape[1]
    return [(EPS_OUTSIDE, 2 * var.sqrt() * EPS + EPS ** 2),
            (UNBIASED_FORWARD, var / (m - 1) + EPS)]


def forward_mistake(x, gamma, beta, y, passed_2d):
    """The named mistake whose output y is, or None."""
    candidates = []
    if x.dim() == 4:
        candidates.append((N_ALONE, lambda: over_n_alone(x, gamma, beta)))
    candidates += [(reason, lambda e=e: per_channel_eps(e)(x, gamma, beta))
                   for reason, e in sigma_models(x)]
    candidates += [
        ("y is x̂ alone: scale it by γ and add β", lambda: torch_x_hat(x)),
        ("γ and β are swapped", lambda: torch_forward(x, beta, gamma)),
        ("y is not normalised with μ_B and σ²_B of the batch", lambda: x * gamma.view(
            stat_view(x)) + beta.view(stat_view(x))),
    ]
    for reason, model in candidates:
        if close(y, model()):
            return reason
    if x.dim() == 4 and passed_2d():
        return f"it matches for (N, C) input: {N_ALONE}"
    return None


def gradient_mistake(x, gamma, beta, g, dx, passed_2d):
    """The named mistake whose dL/dx is dx, or None: the paths through mu_B and sigma_B^2
    recognised by what they guarantee (a constant added to a channel changes no output, so
    sum(dL/dx) = 0; nor does scaling it, eps aside, so sum(dL/dx * x_hat) = 0)."""
    direct = torch_grads(x, gamma, beta, g, direct_path_only)[0]
    if close(dx, direct):
        return ("the paths through μ_B and σ²_B are both missing: only the direct path "
                "γ·g/√(σ² + ε) is left")
    dims = reduce_dims(x)
    size = direct.abs().sum(dim=dims)   # the scale of each channel's terms
    through_mu = dx.sum(dim=dims)
    through_var = (dx * torch_x_hat(x)).sum(dim=dims)
    mu_missing = bool((through_mu.abs() > 1e-3 * size).any())
    var_missing = bool((through_var.abs() > 1e-3 * size).any())
    if mu_missing and not var_missing:
        return (f"the path through μ_B is missing: Σ ∂L/∂xᵢ over a channel is "
                f"{through_mu.abs().max().item():.1e}, not 0 (adding a constant to a channel "
                "changes no output)")
    if var_missing and not mu_missing:
        return (f"the path through σ²_B is missing: Σ ∂L/∂xᵢ·x̂ᵢ over a channel is "
                f"{through_var.abs().max().item():.1e}, not 0 (scaling a channel changes no "
                "output, ε aside)")
    return sigma_mistake(x, gamma, beta, g, 0, dx, passed_2d)


def sigma_mistake(x, gamma, beta, g, index, value, passed_2d):
    """The mistake in sigma^2 + eps's root that gives gradient `index` (0: x, 1: gamma) this
    value, or for (N, C, H, W) input where (N, C) passes, the sums over N alone."""
    for reason, eps in sigma_models(x):
        if close(value, torch_grads(x, gamma, beta, g, per_channel_eps(eps))[index]):
            return reason
    if x.dim() == 4 and passed_2d():
        return f"it matches for (N, C) input: {SUM_N_ALONE}"
    return None


def parameter_gradient_shapes(grad_gamma, grad_beta, x, where):
    for what, grad in (("∂L/∂γ", grad_gamma), ("∂L/∂β", grad_beta)):
        grad = tensor(grad, f"{where}: {what}")
        if tuple(grad.shape) != (x.shape[1],):
            reason = (f": {SUM_N_ALONE}" if x.dim() == 4 and grad.numel() == x[0].numel()
                      else ": one value per channel")
            raise CheckFailed(f"{where}: {what} has shape {tuple(grad.shape)}, not "
                              f"({x.shape[1]},), {describe(x)}{reason}")


def check_gradients(x, gamma, beta, g, grads, passed_2d, where):
    grad_x, grad_gamma, grad_beta = grads[:3]
    parameter_gradient_shapes(grad_gamma, grad_beta, x, where)
    expected = torch_grads(x, gamma, beta, g)
    expect(grad_beta, expected[2], f"{where}: ∂L/∂β", x)
    expect(grad_gamma, expected[1], f"{where}: ∂L/∂γ", x,
           lambda: sigma_mistake(x, gamma, beta, g, 1, grad_gamma, passed_2d))
    expect(grad_x, expected[0], f"{where}: ∂L/∂x", x,
           lambda: gradient_mistake(x, gamma, beta, g, grad_x, passed_2d))

# ----------------------------------------------------------------------------- exercise 1

FORWARD_SHAPES = [(2, 5), (16, 6), (2, 3, 4, 5), (1, 3, 4, 5), (8, 4, 7, 7), (3, 6, 1, 2)]
BACKWARD_SHAPES = [(2, 5), (7, 3), (4, 3, 5, 6), (1, 2, 3, 3)]


def forward_case(shape, seed):
    def check(bn):
        x, gamma, beta, _ = data(shape, seed)
        given = x.clone()
        result = outputs(bn.BatchNormFunction.apply(x, gamma, beta, EPS), 3,
                         "BatchNormFunction.forward")
        if not torch.equal(x, given):
            raise CheckFailed(f"BatchNormFunction.forward changed its input x in place "
                              f"{describe(x)}: compute into new tensors")
        y, mean, var = result[:3]
        def passed_2d():
            return quietly_passes(forward_case((2, 5), 0), bn)
        expect(y, torch_forward(x, gamma, beta), "BatchNormFunction.forward: y", x,
               lambda: forward_mistake(x, gamma, beta, y, passed_2d), "torch's F.batch_norm")
        true_var, true_mean = torch.var_mean(x, dim=reduce_dims(x), correction=0)
        for what, value, truth in (("BatchNormFunction.forward: the batch mean", mean, true_mean),
                                   ("BatchNormFunction.forward: the batch variance", var,
                                    true_var)):
            value = tensor(value, what)
            if value.numel() != x.shape[1]:
                reason = (f": {N_ALONE}" if x.dim() == 4 and value.numel() == x[0].numel()
                          else ": one value per channel")
                raise CheckFailed(f"{what} has {value.numel()} values, not {x.shape[1]}, "
                                  f"{describe(x)}{reason}")
            m = x.numel() // x.shape[1]
            expect(value.reshape(-1), truth, what, x,
                   lambda: "it is the unbiased variance; forward returns eq. 2.1's σ²_B "
                   "(divided by m), and eq. 2.2 takes m/(m − 1) of it" if close(
                       value.reshape(-1), truth * m / (m - 1)) else None)
    return check

# ----------------------------------------------------------------------------- exercise 2

def by_steps_case(shape, seed):
    def check(bn):
        x, gamma, beta, g = data(shape, seed)
        grads = outputs(bn.batch_norm_backward_by_steps(g.clone(), x.clone(), gamma.clone(), EPS),
                        3, "batch_norm_backward_by_steps")
        check_gradients(x, gamma, beta, g, grads,
                        lambda: quietly_passes(by_steps_case((2, 5), 0), bn),
                        "batch_norm_backward_by_steps")
    return check

# ----------------------------------------------------------------------------- exercise 3

class FakeContext:
    """What forward and backward use of autograd's ctx, so that backward can be called
    directly: its gradients come back as they are, shapes and all, not as autograd's error."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self.saved_tensors = ()

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *tensors):
        pass

    def mark_dirty(self, *tensors):
        pass

    def set_materialize_grads(self, value):
        pass


def closed_form_case(shape, seed):
    def check(bn):
        x, gamma, beta, g = data(shape, seed)
        function = bn.BatchNormFunction
        ctx = FakeContext((True, True, True, False, False))
        forward = outputs(function.forward(ctx, x.clone(), gamma.clone(), beta.clone(), EPS,
                                           False), 3, "BatchNormFunction.forward")
        grads = outputs(function.backward(ctx, g.clone(), torch.zeros_like(forward[1]),
                                          torch.zeros_like(forward[2])),
                        3, "BatchNormFunction.backward")
        check_gradients(x, gamma, beta, g, grads,
                        lambda: quietly_passes(closed_form_case((2, 5), 0), bn),
                        "BatchNormFunction.backward")
        # and through autograd, as the layer uses it
        leaves = [t.clone().requires_grad_() for t in (x, gamma, beta)]
        y = function.apply(*leaves, EPS)[0]
        through_autograd = torch.autograd.grad(y, leaves, g)
        for what, got, want in zip(("∂L/∂x", "∂L/∂γ", "∂L/∂β"), through_autograd,
                                   torch_grads(x, gamma, beta, g)):
            expect(got, want, f"through autograd, {what}", x)
    return check


def detached_case(shape, seed):
    def check(bn):
        x, gamma, beta, g = data(shape, seed)
        leaves = [t.clone().requires_grad_() for t in (x, gamma, beta)]
        y = bn.BatchNormFunction.apply(*leaves, EPS, True)[0]
        got = torch.autograd.grad(y, leaves, g)
        want = torch_grads(x, gamma, beta, g, direct_path_only)
        expect(got[0], want[0], "with detach_stats=True, ∂L/∂x", x,
               "it must be the direct path alone, γ·g/√(σ² + ε)")
        expect(got[1], want[1], "with detach_stats=True, ∂L/∂γ", x)
    return check

# ----------------------------------------------------------------------------- exercise 4

def torch_layer(ours, x):
    cls = nn.BatchNorm1d if x.dim() == 2 else nn.BatchNorm2d
    theirs = cls(ours.num_features, momentum=1 - ours.momentum).double()
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)
    return theirs


def layer_of(bn, x, momentum, gamma, beta):
    cls = bn.BatchNorm1d if x.dim() == 2 else bn.BatchNorm2d
    layer = cls(x.shape[1], momentum=momentum).double()
    with torch.no_grad():
        layer.weight.copy_(gamma)
        layer.bias.copy_(beta)
    return layer


def ema(old, new, weight_of_old):
    return weight_of_old * old + (1 - weight_of_old) * new


def running_mistake(layer, x, momentum):
    """After one training step from (0, 1): which rule the running estimates followed."""
    if torch.equal(layer.running_mean, torch.zeros_like(layer.running_mean)) and torch.equal(
            layer.running_var, torch.ones_like(layer.running_var)):
        return ("the running estimates are not updated in training (still 0 and 1 after a "
                "training step)")
    var, mean = torch.var_mean(x, dim=reduce_dims(x), correction=0)
    m, n = x.numel() // x.shape[1], x.shape[0]
    one = torch.ones_like(var)
    rules = [(f"the momentum convention is reversed: running = {1 - momentum:g}·running + "
              f"{momentum:g}·batch, where eq. 2.2 has {momentum:g}·running + "
              f"{1 - momentum:g}·batch (torch's momentum {1 - momentum:g} is ours {momentum:g})",
              1 - momentum, m / (m - 1)),
             ("running_var takes the biased σ²_B; eq. 2.2 takes the unbiased m/(m − 1)·σ²_B",
              momentum, 1.0),
             ("the momentum convention is reversed, and running_var takes the biased σ²_B",
              1 - momentum, 1.0)]
    if x.dim() == 4:
        rules.append(("the unbiased factor m/(m − 1) counts N alone; for (N, C, H, W) input m "
                      "is N·H·W, the values per channel", momentum, n / (n - 1)))
    for reason, weight, factor in rules:   # running_var tells all four apart
        if close(layer.running_var, ema(one, var * factor, weight)):
            return reason
    if close(layer.running_mean, ema(0 * mean, mean, 1 - momentum)):
        return rules[0][0]
    return None


def eval_mistake(layer, x, gamma, beta, y):
    if close(y, torch_forward(x, gamma, beta)):
        return ("in eval mode it normalises with the batch's own statistics; eval uses "
                "running_mean and running_var")
    rv = layer.running_var.detach()
    if close(y, torch.cat([F.batch_norm(x[:, c:c + 1], layer.running_mean[c:c + 1],
                                        rv[c:c + 1], gamma[c:c + 1], beta[c:c + 1],
                                        training=False, eps=float(2 * rv[c].sqrt() * EPS
                                                                  + EPS ** 2))
                           for c in range(x.shape[1])], dim=1)):
        return EPS_OUTSIDE.replace("σ²", "running_var")
    return None


def one_step_case(shape):
    """One training step from (0, 1) on a batch of 2, then eval: the running estimates'
    mistakes named, as torch.nn.BatchNorm (momentum 0.1 for ours 0.9) is the yardstick."""
    def check(bn):
        x, gamma, beta, _ = data(shape, seed=40)
        x_eval = data(shape, seed=41)[0] * 2 - 1
        momentum = 0.9
        layer = layer_of(bn, x, momentum, gamma, beta).train()
        theirs = torch_layer(layer, x).train()
        name = f"{type(layer).__name__}"
        y = tensor(layer(x.clone()), f"in training, {name}'s output")
        expect(y, theirs(x), f"in training, {name}'s output", x,
               "it normalises with the batch statistics, by BatchNormFunction")
        for buffer in ("running_mean", "running_var"):
            expect(getattr(layer, buffer), getattr(theirs, buffer),
                   f"after one training step, {buffer}", x,
                   lambda: running_mistake(layer, x, momentum),
                   f"torch.nn.{name}(momentum={1 - momentum:g})'s")
        if layer.num_batches_tracked.item() != 1:
            raise CheckFailed(f"num_batches_tracked is {layer.num_batches_tracked.item()} "
                              "after one training step, not 1")
        before = [t.clone() for t in (layer.running_mean, layer.running_var)]
        layer.eval(), theirs.eval()
        y = tensor(layer(x_eval.clone()), f"in eval mode, {name}'s output")
        if not (torch.equal(before[0], layer.running_mean)
                and torch.equal(before[1], layer.running_var)):
            raise CheckFailed("a forward in eval mode changed running_mean or running_var: the "
                              "running estimates are updated in training only")
        expect(y, theirs(x_eval), f"in eval mode, {name}'s output", x_eval,
               lambda: eval_mistake(layer, x_eval, gamma, beta, y))
        single = x_eval[:1]
        expect(tensor(layer(single), "in eval mode, the output for one sample"), theirs(single),
               "in eval mode, the output for one sample", single)
    return check


LAYER_SHAPES = [(2, 5), (100, 64), (1, 3, 4, 5), (8, 4, 7, 7), (3, 6, 1, 2)]
MOMENTA = [0.9, 0.5, 0.0]


def layer_steps(bn, shape, momentum, gradients=True, steps=4):
    """Several training steps against torch.nn.BatchNorm1d/2d(momentum=1 - momentum) (the
    output, its gradients, the running estimates, num_batches_tracked), then eval mode."""
    gen = torch.Generator().manual_seed(1)
    _, gamma, beta, _ = data(shape, seed=0)
    x = torch.zeros(shape, dtype=torch.float64)
    ours = layer_of(bn, x, momentum, gamma, beta).train()
    theirs = torch_layer(ours, x).train()
    name = type(ours).__name__
    torch_name = f"torch.nn.{name}(momentum={1 - momentum:g})'s"
    for step in range(steps):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * (step + 1) + step
        upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
        when = f"at training step {step + 1} with momentum {momentum:g},"
        x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours = tensor(ours(x_ours), f"{when} {name}'s output")
        y_theirs = theirs(x_theirs)
        expect(y_ours, y_theirs, f"{when} the output", x, against=torch_name)
        if gradients:
            (y_ours * upstream).sum().backward()
            (y_theirs * upstream).sum().backward()
            for what, got, want in (("∂L/∂x", x_ours.grad, x_theirs.grad),
                                    ("∂L/∂γ", ours.weight.grad, theirs.weight.grad),
                                    ("∂L/∂β", ours.bias.grad, theirs.bias.grad)):
                if got is None:
                    raise CheckFailed(f"{when} {what} is None: the layer's output must come "
                                      "from BatchNormFunction.apply(x, self.weight, self.bias, "
                                      "...)")
                expect(got, want, f"{when} {what}", x, against=torch_name)
            for layer in (ours, theirs):
                layer.weight.grad = layer.bias.grad = None
        for buffer in ("running_mean", "running_var"):
            expect(getattr(ours, buffer), getattr(theirs, buffer), f"{when} {buffer}", x,
                   against=torch_name)
        if ours.num_batches_tracked.item() != step + 1:
            raise CheckFailed(f"num_batches_tracked is {ours.num_batches_tracked.item()} after "
                              f"{step + 1} training steps")
    ours.eval(), theirs.eval()
    x = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
    y = tensor(ours(x), "in eval mode, the output")
    expect(y, theirs(x), "in eval mode, the output", x, against=torch_name)
    if gradients:
        got, = torch.autograd.grad(y.sum(), x)
        want, = torch.autograd.grad(theirs(x).sum(), x)
        expect(got, want, "in eval mode, ∂L/∂x", x, against=torch_name)
    for buffer in ("running_mean", "running_var"):
        expect(getattr(ours, buffer), getattr(theirs, buffer),
               f"after a forward in eval mode, {buffer}", against=torch_name)
    if ours.num_batches_tracked.item() != steps:
        raise CheckFailed("a forward in eval mode changed num_batches_tracked: the running "
                          "estimates are updated in training only")


def layer_case(shape, momentum):
    def check(bn):
        # gradients through the layer need exercise 3's backward
        layer_steps(bn, shape, momentum, gradients=passes(bn, 3))
    return check

# ----------------------------------------------------------------------------- exercise 5

def with_statistics(model, seed):
    gen = torch.Generator().manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for layer in model.modules():
            if hasattr(layer, "running_var") and hasattr(layer, "num_features"):
                c = layer.num_features
                layer.weight.copy_(torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)
                layer.bias.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
                layer.running_mean.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
                layer.running_var.copy_(torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)
    return model.eval()


def as_torch(model, bn):
    """A copy of model with each of bn's layers replaced by torch's, its state loaded."""
    copy = nn.Sequential(*[(nn.BatchNorm1d if isinstance(m, bn.BatchNorm1d) else nn.BatchNorm2d)(
        m.num_features, eps=m.eps).double() if isinstance(m, bn.BatchNorm) else m
        for m in model])
    for mine, theirs in zip(model, copy):
        if isinstance(mine, bn.BatchNorm):
            theirs.load_state_dict(mine.state_dict())
    return copy.eval()


def fold_case(bias):
    """fold_batchnorm against torch.nn.utils.fusion, on a Conv2d and a Linear (with a bias or
    without) each followed by BN; then the folded model's output against torch's BN in eval."""
    def check(bn):
        from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=bias), bn.BatchNorm2d(3), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(3 * 4 * 4, 4, bias=bias),
                                  bn.BatchNorm1d(4))
        model = with_statistics(model, seed=2 + bias)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        folded = bn.fold_batchnorm(model)
        after = model.state_dict()
        if after.keys() != before.keys() or not all(torch.equal(after[k], before[k])
                                                    for k in before):
            raise CheckFailed("fold_batchnorm changed the model passed in: change its copy")
        if not isinstance(folded, nn.Module) or folded.training:
            raise CheckFailed("fold_batchnorm must return the folded copy in eval mode")
        with_bias = "with a bias" if bias else "without a bias"
        for index, fuse in ((0, fuse_conv_bn_weights), (4, fuse_linear_bn_weights)):
            layer, norm = model[index], model[index + 1]
            kind = type(layer).__name__
            if not isinstance(folded[index + 1], nn.Identity):
                raise CheckFailed(f"the BN after the {kind} {with_bias} is still in the folded "
                                  "model: replace it by nn.Identity()")
            layer_bias = layer.bias if layer.bias is not None else torch.zeros(
                norm.num_features, dtype=torch.float64)
            weight, new_bias = fuse(layer.weight, layer_bias, norm.running_mean,
                                    norm.running_var, norm.eps, norm.weight, norm.bias)
            expect(folded[index].weight, weight, f"folding the {kind} {with_bias}, W'",
                   against=f"torch.nn.utils.fusion.{fuse.__name__}'s")
            if folded[index].bias is None:
                raise CheckFailed(f"the folded {kind} {with_bias} has no bias: b' = (b − "
                                  "running_mean)·scale + β needs one")
            expect(folded[index].bias, new_bias, f"folding the {kind} {with_bias}, b'",
                   against=f"torch.nn.utils.fusion.{fuse.__name__}'s")
        x = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)
        with torch.no_grad():
            expect(folded(x), as_torch(model, bn)(x), "the folded model's output", x,
                   against="the unfolded model's with torch's BN in eval mode")
    return check

# ----------------------------------------------------------------------------- all of them

CASES = (
    [(1, f"{shape}", forward_case(shape, seed)) for seed, shape in enumerate(FORWARD_SHAPES)]
    + [(2, f"{shape}", by_steps_case(shape, seed)) for seed, shape in enumerate(BACKWARD_SHAPES)]
    + [(3, f"{shape}", closed_form_case(shape, seed))
       for seed, shape in enumerate(BACKWARD_SHAPES)]
    + [(3, f"detach_stats {shape}", detached_case(shape, 9)) for shape in [(6, 4), (3, 4, 5, 5)]]
    + [(4, f"one step {shape}", one_step_case(shape)) for shape in [(2, 3), (2, 2, 2, 2)]]
    + [(4, f"{shape} momentum {momentum}", layer_case(shape, momentum))
       for shape in LAYER_SHAPES for momentum in MOMENTA]
    + [(5, f"bias={bias}", fold_case(bias)) for bias in (True, False)]
)

NOT_DONE = re.compile(r"exercise (\d)\b")


def stub_exercise(error):
    """The exercise whose stub raised `error` (NotImplementedError("exercise N: ...")), or None."""
    found = isinstance(error, NotImplementedError) and NOT_DONE.match(str(error))
    return int(found.group(1)) if found else None


def where_in(error, module):
    """' at batchnorm.py line 87 (in forward): <the line>' for the student's deepest frame."""
    path = getattr(module, "__file__", None)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
    if not frames:
        return ""
    frame = frames[-1]
    code = (frame.line or "").split("  #", 1)[0].strip()
    return f" at {frame.filename.rsplit('/', 1)[-1]} line {frame.lineno} (in {frame.name}): {code}"


def run_check(module, exercise, check):
    """(status, message, waits_for) of one check: passed, not done yet (its own stub, or that
    of the exercise it waits for) or failed with one sentence."""
    try:
        check(module)
    except CheckFailed as failure:
        return "failed", str(failure), None
    except KeyboardInterrupt:
        raise
    except BaseException as error:   # SystemExit too: a student's sys.exit() is a failure
        stub = stub_exercise(error)
        if stub is not None:
            return "not done yet", "" if stub == exercise else f"waits for exercise {stub}", stub
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return "failed", (f"{type(error).__name__}: {message}"[:300] + where_in(error, module)
                          ), None
    return "passed", "", None


_passes = {}


def passes(module, exercise):
    """Whether the exercise passes for module, graded once (exercise 4 compares gradients
    through the layer only when exercise 3 passes, in the suite and the grader alike)."""
    key = (id(module), exercise)
    if key not in _passes:
        grade_exercise(module, exercise)
    return _passes[key]


def known(module, statuses):
    """Record results graded elsewhere ({exercise: status}, grade.py's earlier workers)."""
    for exercise, status in statuses.items():
        _passes[(id(module), int(exercise))] = status == "passed"


def grade_exercise(module, exercise):
    """(status, message) of the exercise: its checks in order, the first that fails named."""
    status, message = "passed", ""
    for number, _name, check in CASES:
        if number == exercise:
            status, message, _ = run_check(module, exercise, check)
            if status != "passed":
                break
    _passes[(id(module), exercise)] = status == "passed"
    if status == "failed" and exercise in BUILDS_ON:
        base, why = BUILDS_ON[exercise]
        if not passes(module, base):
            message += f" (exercise {base} fails too, and {why}: fix it first)"
    return status, message


def grade_module(module):
    """{exercise: (status, message)} of every exercise, in-process and without time limits."""
    return {exercise: grade_exercise(module, exercise) for exercise in EXERCISES}


def line(exercise, status, message=""):
    return f"exercise {exercise} ({EXERCISES[exercise]}): {status}" + (
        f": {message}" if message else "")

# ----------------------------------------------------------------------------- the copy's scripts

def probe(module, exercise):
    """Call what exercise writes, on tiny input: raises its stub's NotImplementedError if the
    exercise is not done. No random numbers are drawn (a run's numbers stay the same)."""
    x = torch.arange(6, dtype=torch.float32).view(3, 2) ** 1.5
    ones = torch.ones(2)
    if exercise == 1:
        module.BatchNormFunction.apply(x, ones, ones, EPS)
    elif exercise == 2:
        module.batch_norm_backward_by_steps(x, x, ones)
    elif exercise == 3:
        x = x.clone().requires_grad_()
        module.BatchNormFunction.apply(x, ones, ones, EPS)[0].sum().backward()
    elif exercise == 4:
        layer = module.BatchNorm1d(2)
        with torch.no_grad():
            layer(x)
            layer.eval()(x)
    elif exercise == 5:
        module.fold_batchnorm(nn.Sequential(nn.Linear(2, 2), module.BatchNorm1d(2)))


def first_not_done(module, exercises):
    """(exercise, its stub's message) of the first of `exercises` not done yet, or None."""
    for exercise in exercises:
        try:
            with torch.random.fork_rng(devices=[]):
                probe(module, exercise)
        except NotImplementedError as error:
            stub = stub_exercise(error)
            if stub is not None:
                return stub, str(error)
        except Exception:
            pass   # done, if not right: grade.py says what is wrong
    return None


NEEDED_BY_NORM = {"bn": (1, 3, 4), "brn": (1, 3, 4), "ln": (1, 3), "gn": (1, 3)}
_ready = set()


def require_exercises(norm):
    """In the student's copy (norms.norm_layers calls it): a network with `norm` is built only
    once the exercises it runs on are done; until then one line names the first not done."""
    needed = NEEDED_BY_NORM.get(norm, ())
    if not needed or norm in _ready:
        return
    import batchnorm
    import plumbing
    missing = first_not_done(batchnorm, needed)
    if missing:
        names = ", ".join(map(str, needed[:-1])) + f" and {needed[-1]}"
        raise plumbing.SolverError(
            f"exercise {missing[0]} ({EXERCISES[missing[0]]}) is not done yet in batchnorm.py: "
            f"--norm {norm} runs on exercises {names}; `python grade.py` checks them")
    _ready.add(norm)
