"""batchnorm.py against torch.nn.BatchNorm1d/2d, gradcheck and the error cases.

Ours with momentum m is torch's with momentum 1 - m (see batchnorm.py), so every comparison
builds torch's layer that way. Comparisons run in float64, where both should agree to ~1e-12.
The comparisons grade.py grades the exercises by are checks.py's, run here case by case
(test_exercise); the rest of this file checks what the exercises do not cover.
"""
import pytest
import torch
from torch import nn

import batchnorm
import checks
import cnn
import mlp
import resnet
from batchnorm import BatchNorm1d, BatchNorm2d, BatchNormFunction, batch_norm_reference

TOL = dict(rtol=1e-9, atol=1e-9)

CASES = [  # (ours, torch's, input shape)
    (BatchNorm1d, nn.BatchNorm1d, (2, 5)),         # the smallest batch that has a variance
    (BatchNorm1d, nn.BatchNorm1d, (100, 64)),
    (BatchNorm2d, nn.BatchNorm2d, (1, 3, 4, 5)),   # batch of one: statistics over H and W
    (BatchNorm2d, nn.BatchNorm2d, (8, 4, 7, 7)),
    (BatchNorm2d, nn.BatchNorm2d, (3, 6, 1, 2)),
]


def make_pair(ours_cls, torch_cls, channels, momentum, seed=0):
    """Our layer and torch's with the same random gamma and beta, both in float64."""
    ours = ours_cls(channels, momentum=momentum).double()
    theirs = torch_cls(channels, momentum=1 - momentum).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gamma = torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5
        beta = torch.randn(channels, generator=gen, dtype=torch.float64)
        for layer in (ours, theirs):
            layer.weight.copy_(gamma)
            layer.bias.copy_(beta)
    return ours, theirs


def first_case(exercise, name):
    return next(n for e, n, _ in checks.CASES if e == exercise) == name


@pytest.mark.parametrize("exercise,name,check", checks.CASES,
                         ids=[f"exercise{e}-{n}".replace(" ", "") for e, n, _ in checks.CASES])
def test_exercise(exercise, name, check):
    """grade.py's checks (checks.py) one case at a time: the forward, both backwards and the
    folding against torch's functions, the layer over training steps and eval against
    torch.nn.BatchNorm1d/2d. A failure reads as the grader's line. In the student's copy an
    exercise not done yet fails its first case and skips the others."""
    try:
        check(batchnorm)
        return
    except checks.CheckFailed as failure:
        line = checks.line(exercise, "failed", str(failure))
    except NotImplementedError as error:
        stub = checks.stub_exercise(error)
        if stub is None:
            raise
        if stub != exercise:
            pytest.skip(f"waits for exercise {stub} ({checks.EXERCISES[stub]})")
        line = checks.line(exercise, "not done yet")
        if not first_case(exercise, name):
            pytest.skip(line)
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        raise AssertionError(checks.line(exercise, "failed", message)) from error
    pytest.fail(line, pytrace=False)


def test_running_estimates_follow_eq_2_2_by_hand():
    """After one step from (0, 1): running = 0.9 * initial + 0.1 * batch statistic."""
    layer = BatchNorm1d(3)
    x = torch.tensor([[1.0, 2.0, -1.0], [3.0, 6.0, -1.0], [5.0, 10.0, 2.0]])
    layer(x)
    unbiased_var = x.var(dim=0, correction=1)
    torch.testing.assert_close(layer.running_mean, 0.1 * x.mean(dim=0))
    torch.testing.assert_close(layer.running_var, 0.9 * 1 + 0.1 * unbiased_var)


def test_interface():
    layer = BatchNorm2d(7)
    assert (layer.num_features, layer.eps, layer.momentum) == (7, 1e-5, 0.9)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert [name for name, _ in layer.named_buffers()] == [
        name for name, _ in nn.BatchNorm2d(7).named_buffers()]   # the three of torch's
    assert torch.equal(layer.weight, torch.ones(7)) and torch.equal(layer.bias, torch.zeros(7))
    assert torch.equal(layer.running_mean, torch.zeros(7))
    assert torch.equal(layer.running_var, torch.ones(7))
    assert layer.num_batches_tracked.dtype == torch.long and layer.num_batches_tracked.shape == ()
    assert list(layer.state_dict()) == list(nn.BatchNorm2d(7).state_dict())
    layer = layer.double()
    assert layer.running_var.dtype == torch.float64
    assert layer.num_batches_tracked.dtype == torch.long   # a count: .double() leaves it alone


def trained(layer, shape, steps, seed):
    """The layer after `steps` training-mode forwards on batches of `shape`, in float64."""
    gen = torch.Generator().manual_seed(seed)
    layer = layer.double().train()
    with torch.no_grad():
        for step in range(steps):
            layer(torch.randn(shape, generator=gen, dtype=torch.float64) * (step + 2) - step)
    return layer


@pytest.mark.parametrize("ours_cls,torch_cls,shape", [CASES[1], CASES[3]])
@pytest.mark.parametrize("direction", ["torch into ours", "ours into torch"])
def test_state_dict_moves_between_ours_and_torchs(ours_cls, torch_cls, shape, direction):
    """strict=True both ways, every value unchanged; then both continue as one layer would."""
    ours, theirs = make_pair(ours_cls, torch_cls, shape[1], momentum=0.9)
    source, target = (theirs, ours) if direction == "torch into ours" else (ours, theirs)
    fresh = type(target)(shape[1], momentum=target.momentum).double()
    source = trained(source, shape, steps=3, seed=7)
    state = source.state_dict()
    assert state["num_batches_tracked"].item() == 3
    fresh.load_state_dict(state, strict=True)
    for name, value in fresh.state_dict().items():
        assert value.dtype == state[name].dtype and torch.equal(value, state[name]), name
    # Momentum 0.9 in ours is 0.1 in torch's, untranslated: the next step agrees.
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), source(x), **TOL)
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[name], **TOL)
    assert fresh.num_batches_tracked.item() == 4
    fresh.eval(), source.eval()
    torch.testing.assert_close(fresh(x), source(x), **TOL)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4, 5), (1, 2, 3, 3)])
def test_gradcheck_through_hand_written_backward(shape):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    gamma = (torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    beta = torch.randn(shape[1], generator=gen, dtype=torch.float64, requires_grad=True)

    def normalized(x, gamma, beta):
        return BatchNormFunction.apply(x, gamma, beta, 1e-5)[0]

    assert torch.autograd.gradcheck(normalized, (x, gamma, beta))


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5, 5)])
def test_hand_written_backward_equals_autograd_of_reference(shape):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(shape[1], generator=gen, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(shape[1], generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(shape, generator=gen, dtype=torch.float64)

    y_hand = BatchNormFunction.apply(x, gamma, beta, 1e-5)[0]
    y_reference = batch_norm_reference(x, gamma, beta, 1e-5)
    torch.testing.assert_close(y_hand, y_reference, **TOL)
    grads_hand = torch.autograd.grad(y_hand, (x, gamma, beta), upstream)
    grads_reference = torch.autograd.grad(y_reference, (x, gamma, beta), upstream)
    for hand, reference in zip(grads_hand, grads_reference):
        torch.testing.assert_close(hand, reference, **TOL)


@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous"])
def test_memory_layouts_give_the_same_result(layout):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, 6, 5, generator=gen, dtype=torch.float64)
    upstream = torch.randn(4, 3, 6, 5, generator=gen, dtype=torch.float64)
    if layout == "channels_last":
        x_other = x.to(memory_format=torch.channels_last)
        assert not x_other.is_contiguous()
    else:
        x_other = x.transpose(2, 3).contiguous().transpose(2, 3)   # same values, strided
        assert not x_other.is_contiguous()

    results = []
    for inp in (x, x_other):
        layer = BatchNorm2d(3).double()
        inp = inp.clone().requires_grad_()
        out = layer(inp)
        (out * upstream).sum().backward()
        results.append((out, inp.grad, layer.weight.grad, layer.running_var))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64_match_torch(dtype):
    ours, theirs = BatchNorm2d(5).to(dtype), nn.BatchNorm2d(5, momentum=0.1).to(dtype)
    x = torch.randn(10, 5, 8, 8, dtype=dtype) * 3 + 2
    y = ours(x)
    assert y.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else TOL
    torch.testing.assert_close(y, theirs(x), **tol)
    torch.testing.assert_close(ours.running_var, theirs.running_var, **tol)


LOW_PRECISION_CASES = [  # (ours, torch's, the layer before BN, its input shape)
    (BatchNorm1d, nn.BatchNorm1d, lambda: nn.Linear(7, 5), (16, 7)),
    (BatchNorm2d, nn.BatchNorm2d, lambda: nn.Conv2d(2, 5, 3, padding=1), (4, 2, 5, 5)),
]


def assert_within_one_rounding_step(ours, theirs):
    """Equal up to one step of ours's dtype at the value's magnitude (2**-7 of it in bfloat16,
    2**-10 in float16): what two float32 computations rounded to that dtype can differ by.
    Near zero that step is tiny, so a float32-sized absolute slack is allowed too."""
    assert ours.dtype == theirs.dtype
    step = torch.finfo(ours.dtype).eps
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=step, atol=1e-5)


@pytest.mark.parametrize("precision", ["autocast bfloat16", "bfloat16", "float16"])
@pytest.mark.parametrize("ours_cls,torch_cls,make_before,shape", LOW_PRECISION_CASES)
def test_low_precision_input_is_normalised_as_torch_does(ours_cls, torch_cls, make_before,
                                                         shape, precision):
    """bfloat16/float16 in, the input's dtype out and back, statistics kept in float32.

    Under autocast a Linear or Conv2d before BN hands it bfloat16, as in a mixed-precision
    network; otherwise the input is made low precision by hand. Torch's BN under the same
    conditions is the oracle, in training (two steps) and in evaluation."""
    torch.manual_seed(9)
    before = make_before()
    ours, theirs = ours_cls(5), torch_cls(5, momentum=0.1)
    with torch.no_grad():
        for layer in (ours, theirs):
            layer.weight.copy_(torch.linspace(0.5, 2, 5))
            layer.bias.copy_(torch.linspace(-1, 1, 5))
    use_autocast = precision == "autocast bfloat16"
    dtype = torch.bfloat16 if precision.endswith("bfloat16") else torch.float16

    def step(layer, x, upstream):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_autocast):
            h = before(x)                  # bfloat16 under autocast, float32 without
            if not use_autocast:
                h = h.to(dtype)
            h = h.detach().requires_grad_()   # the same low-precision values into both layers
            y = layer(h)
        (y.float() * upstream).sum().backward()
        return h, y

    for training in (True, False):
        for layer in (ours, theirs):
            layer.train(training)
        x = torch.randn(shape) * 3 + 1
        upstream = torch.randn(before(x).shape)
        for _ in range(2 if training else 1):
            (h_ours, y_ours), (h_theirs, y_theirs) = (step(ours, x, upstream),
                                                      step(theirs, x, upstream))
            assert h_ours.dtype == dtype and y_theirs.dtype == dtype   # torch's keeps the dtype
            assert_within_one_rounding_step(y_ours, y_theirs)
            assert h_ours.grad.dtype == dtype
            assert_within_one_rounding_step(h_ours.grad, h_theirs.grad)
            for name in ("running_mean", "running_var"):
                assert getattr(ours, name).dtype == torch.float32
                torch.testing.assert_close(getattr(ours, name), getattr(theirs, name),
                                           rtol=1e-5, atol=1e-6)
            assert ours.weight.grad.dtype == torch.float32
            torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-3, atol=1e-3)
            for layer in (ours, theirs):
                layer.zero_grad()
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 2


def test_constant_channel_stays_finite():
    layer = BatchNorm2d(2).double()
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    x[:, 0] = 7.0   # channel 0 has zero variance: only eps keeps 1/sqrt(var + eps) finite
    x.requires_grad_()
    y = layer(x)
    y.pow(2).sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.weight.grad).all() and torch.isfinite(layer.bias.grad).all()
    assert torch.allclose(y[:, 0], torch.zeros_like(y[:, 0]))   # gamma * 0 + beta, beta = 0


@pytest.mark.parametrize("layer,shape", [(BatchNorm1d(4), (6, 4)), (BatchNorm2d(4), (6, 4, 5, 5))])
def test_eval_output_of_a_sample_is_independent_of_its_batch(layer, shape):
    layer = layer.double()
    for _ in range(3):   # give the running estimates something to hold
        layer(torch.randn(shape, dtype=torch.float64) * 2 + 1)
    layer.eval()
    before = (layer.running_mean.clone(), layer.running_var.clone())

    batch = torch.randn(shape, dtype=torch.float64)
    in_batch = layer(batch)[:1]
    alone = layer(batch[:1])                      # batch of one: fine in eval mode
    other_batch = torch.cat([batch[:1], 100 * torch.randn(shape, dtype=torch.float64)])
    torch.testing.assert_close(alone, in_batch, **TOL)
    torch.testing.assert_close(layer(other_batch)[:1], in_batch, **TOL)
    assert torch.equal(layer.running_mean, before[0]) and torch.equal(layer.running_var, before[1])


@pytest.mark.parametrize("layer,shape,message", [
    (BatchNorm1d(4), (1, 4), "more than one value per channel"),
    (BatchNorm2d(4), (1, 4, 1, 1), "more than one value per channel"),
    (BatchNorm1d(4), (2, 4, 3), "expects a 2-D input"),
    (BatchNorm2d(4), (2, 4), "expects a 4-D input"),
    (BatchNorm1d(4), (2, 5), "expects 4 channels"),
    (BatchNorm2d(4), (2, 3, 5, 5), "expects 4 channels"),
])
def test_bad_input_raises_value_error(layer, shape, message):
    with pytest.raises(ValueError, match=message) as error:
        layer(torch.randn(shape))
    assert str(tuple(shape)) in str(error.value)   # says what came, not only what was expected


def test_one_value_per_channel_is_fine_in_eval():
    layer = BatchNorm1d(4).eval()
    assert layer(torch.randn(1, 4)).shape == (1, 4)


# ----------------------------------------------------------------------------- after training

def with_random_statistics(model, dtype, seed=0):
    """The model in `dtype` with every BN's gamma, beta and running estimates made non-trivial."""
    model = model.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in batchnorm.batchnorm_layers(model):
            c = layer.num_features
            layer.weight.copy_(torch.rand(c, generator=gen, dtype=dtype) + 0.5)
            layer.bias.copy_(torch.randn(c, generator=gen, dtype=dtype))
            layer.running_mean.copy_(torch.randn(c, generator=gen, dtype=dtype))
            layer.running_var.copy_(torch.rand(c, generator=gen, dtype=dtype) + 0.5)
    return model.eval()


@pytest.mark.parametrize("script", [mlp, cnn, resnet])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_folded_model_gives_the_same_eval_outputs(script, dtype, tol):
    torch.manual_seed(0)
    model = with_random_statistics(script.build_model("bn"), dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = batchnorm.fold_batchnorm(model)
    assert not batchnorm.batchnorm_layers(folded) and not folded.training
    x = torch.randn(5, 1, 28, 28, dtype=dtype)
    torch.testing.assert_close(folded(x), model(x), rtol=tol, atol=tol)
    after = model.state_dict()   # the model passed in is untouched, BN layers and all
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    weight_layers = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    assert len(batchnorm.batchnorm_layers(model)) == weight_layers - 1   # all but the head


@pytest.mark.parametrize("shape,conv", [((8, 5), False), ((6, 2, 5, 5), True)])
def test_recalibrate_equals_torchs_cumulative_average(shape, conv):
    torch.manual_seed(2)

    def network(norm1, norm2):
        if conv:
            return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), norm2(3), nn.ReLU(),
                                 nn.Conv2d(3, 4, 3), norm2(4))
        return nn.Sequential(nn.Linear(5, 4), norm1(4), nn.ReLU(), nn.Linear(4, 3), norm1(3))

    ours = network(BatchNorm1d, BatchNorm2d).double()
    theirs = network(lambda c: nn.BatchNorm1d(c, momentum=None),
                     lambda c: nn.BatchNorm2d(c, momentum=None)).double()
    theirs.load_state_dict(ours.state_dict(), strict=True)   # the same weights, gamma and beta
    batches = [torch.randn(shape, dtype=torch.float64) * 3 + 1 for _ in range(5)]
    parameters = [p.clone() for p in ours.parameters()]
    theirs.train()
    with torch.no_grad():
        for batch in batches:
            theirs(batch)
    assert batchnorm.recalibrate(ours, batches) is ours and not ours.training
    torch_layers = [m for m in theirs if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for mine, torchs in zip(batchnorm.batchnorm_layers(ours), torch_layers, strict=True):
        torch.testing.assert_close(mine.running_mean, torchs.running_mean, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(mine.running_var, torchs.running_var, rtol=1e-10, atol=1e-10)
        assert mine.num_batches_tracked.item() == torchs.num_batches_tracked.item() == 5
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), parameters))


def test_recalibrate_counts_its_batches_after_the_training_ones():
    """Each recalibration batch is a training-mode forward: counted, as torch's layer would."""
    layer = trained(BatchNorm1d(3), (6, 3), steps=4, seed=8)
    before = layer.running_mean.clone()
    batches = [torch.randn(6, 3, dtype=torch.float64) for _ in range(2)]
    batchnorm.recalibrate(layer, batches)
    assert layer.num_batches_tracked.item() == 4 + 2
    torch.testing.assert_close(layer.running_mean, torch.stack(batches).mean(dim=(0, 1)))
    assert not torch.allclose(layer.running_mean, before)


@pytest.mark.parametrize("layer_cls,shape", [(BatchNorm1d, (6, 4)), (BatchNorm2d, (3, 4, 5, 5))])
def test_detached_statistics_give_the_direct_path_only(layer_cls, shape):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1
    upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
    results = {}
    for detach in (False, True):
        layer = layer_cls(shape[1], detach_stats=detach).double()
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(0.5, 2, shape[1], dtype=torch.float64))
        inp = x.clone().requires_grad_()
        y = layer(inp)
        (y * upstream).sum().backward()
        results[detach] = (y, inp.grad, layer.weight.grad, layer.bias.grad, layer)
    stat_shape, dims = batchnorm.stat_shape_and_dims(x)
    var = x.var(dim=dims, correction=0, keepdim=True)
    gamma = results[True][4].weight.detach().view(stat_shape)
    torch.testing.assert_close(results[True][1], gamma * upstream / torch.sqrt(var + 1e-5),
                               rtol=1e-12, atol=1e-12)
    for same in (0, 2, 3):   # the forward and the gradients of gamma and beta do not change
        torch.testing.assert_close(results[True][same], results[False][same],
                                   rtol=1e-12, atol=1e-12)
    assert not torch.allclose(results[True][1], results[False][1], atol=1e-3)

    detached = results[True][4]
    # The true gradient passes gradcheck against the layer's own forward; the detached one fails it.
    assert torch.autograd.gradcheck(results[False][4], (x.clone().requires_grad_(),))
    assert not torch.autograd.gradcheck(detached, (x.clone().requires_grad_(),),
                                        raise_exception=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    ours = BatchNorm2d(3).double()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    y = ours(x)
    y.pow(3).sum().backward()
    ours_cuda = BatchNorm2d(3).double().cuda()
    x_cuda = x.detach().cuda().requires_grad_()
    y_cuda = ours_cuda(x_cuda)
    y_cuda.pow(3).sum().backward()
    torch.testing.assert_close(y_cuda.cpu(), y, **TOL)
    torch.testing.assert_close(x_cuda.grad.cpu(), x.grad, **TOL)
    torch.testing.assert_close(ours_cuda.running_var.cpu(), ours.running_var, **TOL)
