"""batchnorm.py against torch.nn.BatchNorm1d/2d, gradcheck and the error cases.

Ours with momentum m is torch's with momentum 1 - m (see batchnorm.py), so every comparison
builds torch's layer that way. Comparisons run in float64, where both should agree to ~1e-12.
"""
import pytest
import torch
from torch import nn

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


@pytest.mark.parametrize("momentum", [0.9, 0.5, 0.0])
@pytest.mark.parametrize("ours_cls,torch_cls,shape", CASES)
def test_matches_torch_over_training_steps_and_eval(ours_cls, torch_cls, shape, momentum):
    ours, theirs = make_pair(ours_cls, torch_cls, shape[1], momentum)
    gen = torch.Generator().manual_seed(1)
    for step in range(4):
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * (step + 1) + step)
        upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
        x_ours = x.clone().requires_grad_()
        x_theirs = x.clone().requires_grad_()
        y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
        torch.testing.assert_close(y_ours, y_theirs, **TOL)

        (y_ours * upstream).sum().backward()
        (y_theirs * upstream).sum().backward()
        torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOL)
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **TOL)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, **TOL)
        for layer in (ours, theirs):
            layer.weight.grad = layer.bias.grad = None

        torch.testing.assert_close(ours.running_mean, theirs.running_mean, **TOL)
        torch.testing.assert_close(ours.running_var, theirs.running_var, **TOL)

    # The running estimates must have moved away from their initial 0 and 1 (unless momentum
    # makes them pure batch statistics, which moves them too): otherwise eval tests nothing.
    assert not torch.allclose(ours.running_mean, torch.zeros_like(ours.running_mean))

    ours.eval(), theirs.eval()
    x = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
    torch.testing.assert_close(ours(x), theirs(x), **TOL)
    grad_ours, = torch.autograd.grad(ours(x).sum(), x)
    grad_theirs, = torch.autograd.grad(theirs(x).sum(), x)
    torch.testing.assert_close(grad_ours, grad_theirs, **TOL)


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
    assert [name for name, _ in layer.named_buffers()] == ["running_mean", "running_var"]
    assert torch.equal(layer.weight, torch.ones(7)) and torch.equal(layer.bias, torch.zeros(7))
    assert torch.equal(layer.running_mean, torch.zeros(7))
    assert torch.equal(layer.running_var, torch.ones(7))
    assert set(layer.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    assert layer.double().running_var.dtype == torch.float64


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
