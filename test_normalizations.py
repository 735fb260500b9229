"""BN's relatives in norms.py: LayerNorm, GroupNorm, Batch Renormalization, the layers by name.

LayerNorm and GroupNorm against torch.nn's in float64; Batch Renormalization against our own
BatchNorm (r_max = 1, d_max = 0), against evaluation's formula (no clipping) and against
autograd through its formula written plainly.
"""
import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import batchnorm
import norms
from batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d
from norms import (BatchRenorm, BatchRenorm1d, BatchRenorm2d, GroupNorm, LayerNorm,
                   PAPER_WARMUP)

TOL = dict(rtol=1e-10, atol=1e-10)


def randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def with_affine(layers, channels, seed=1):
    """The same random gamma and beta in every layer, all in float64."""
    gamma, beta = randn(channels, seed=seed).abs() + 0.5, randn(channels, seed=seed + 1)
    layers = [layer.double() for layer in layers]
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(gamma)
            layer.bias.copy_(beta)
    return layers


def outputs_and_grads(layer, x, upstream):
    """y, dL/dx, dL/dgamma, dL/dbeta for L = sum(y * upstream)."""
    x = x.clone().requires_grad_()
    layer.zero_grad()
    y = layer(x)
    (y * upstream).sum().backward()
    return y.detach(), x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


def assert_all_close(ours, theirs, **tol):
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **(tol or TOL))


# ----------------------------------------------------------------------------- LN, GN vs torch

GN_CASES = [(groups, shape) for groups in (1, 2, 3, 6)
            for shape in ((5, 6), (3, 6, 4, 5), (1, 6, 2, 3))]


@pytest.mark.parametrize("groups,shape", GN_CASES)
def test_group_norm_matches_torch(groups, shape):
    ours, theirs = with_affine([GroupNorm(groups, 6), nn.GroupNorm(groups, 6)], 6)
    x, upstream = randn(*shape, seed=3) * 3 + 2, randn(*shape, seed=4)
    assert_all_close(outputs_and_grads(ours, x, upstream), outputs_and_grads(theirs, x, upstream))


@pytest.mark.parametrize("shape,torch_layer", [
    ((5, 6), nn.LayerNorm(6)),             # per-feature gamma, beta over the C features
    ((1, 6), nn.LayerNorm(6)),             # a batch of one
    ((3, 6, 4, 5), nn.GroupNorm(1, 6)),    # over C*H*W, per-channel gamma, beta
    ((1, 6, 2, 3), nn.GroupNorm(1, 6)),
])
def test_layer_norm_matches_torch(shape, torch_layer):
    ours, theirs = with_affine([LayerNorm(6), torch_layer], 6)
    x, upstream = randn(*shape, seed=5) * 2 - 1, randn(*shape, seed=6)
    assert_all_close(outputs_and_grads(ours, x, upstream), outputs_and_grads(theirs, x, upstream))


@pytest.mark.parametrize("layer,shape", [
    (LayerNorm(4), (3, 4)),
    (LayerNorm(4), (2, 4, 2, 3)),
    (GroupNorm(2, 4), (2, 4, 2, 3)),
    (GroupNorm(2, 4), (1, 4)),
    (GroupNorm(4, 4), (2, 4, 3, 1)),
])
def test_gradcheck_through_group_norm(layer, shape):
    layer = with_affine([layer], shape[1])[0]
    x = randn(*shape, seed=7).requires_grad_()
    gamma = layer.weight.detach().clone().requires_grad_()
    beta = layer.bias.detach().clone().requires_grad_()

    def normalized(x, gamma, beta):
        return torch.func.functional_call(layer, {"weight": gamma, "bias": beta}, (x,))

    assert torch.autograd.gradcheck(normalized, (x, gamma, beta))


@pytest.mark.parametrize("layer,shape", [
    (LayerNorm(6), (4, 6)), (LayerNorm(6), (4, 6, 3, 3)),
    (GroupNorm(3, 6), (4, 6)), (GroupNorm(3, 6), (4, 6, 3, 3)),
])
def test_training_and_evaluation_agree_and_samples_are_independent(layer, shape):
    layer = with_affine([layer], 6)[0]
    x = randn(*shape, seed=8) * 4 + 1
    y_train = layer.train()(x)
    y_eval = layer.eval()(x)
    assert torch.equal(y_train, y_eval)
    assert not list(layer.buffers())   # nothing to estimate, nothing that training changes
    alone = layer.train()(x[2:3])      # a batch of one, in training: the same answer
    torch.testing.assert_close(alone, y_train[2:3], rtol=1e-12, atol=1e-12)


def test_group_norm_channels_must_divide_into_groups():
    with pytest.raises(ValueError, match=r"num_channels \(10\).*num_groups \(4\)"):
        GroupNorm(4, 10)
    with pytest.raises(ValueError, match="num_groups >= 1"):
        GroupNorm(0, 10)


@pytest.mark.parametrize("layer,shape,message", [
    (GroupNorm(2, 6), (6,), r"GroupNorm\(2, 6\) expects a 2-D input \(N, C\) or a 4-D input "
                            r"\(N, C, H, W\), got a 1-D input of shape \(6,\)"),
    (GroupNorm(2, 6), (2, 6, 5), r"got a 3-D input of shape \(2, 6, 5\)"),
    (GroupNorm(2, 6), (2, 4, 3, 3), r"GroupNorm\(2, 6\) expects 6 channels in dim 1, got input "
                                    r"of shape \(2, 4, 3, 3\)"),
    (LayerNorm(6), (3, 5), r"LayerNorm\(6\) expects 6 channels in dim 1"),
])
def test_bad_input_raises_value_error(layer, shape, message):
    with pytest.raises(ValueError, match=message):
        layer(torch.zeros(shape))


# ----------------------------------------------------------------------------- Batch Renorm

RENORM_CASES = [(BatchRenorm1d, BatchNorm1d, (8, 5)), (BatchRenorm2d, BatchNorm2d, (4, 3, 5, 5))]
RENORM_SHAPES = [(renorm_cls, shape) for renorm_cls, _, shape in RENORM_CASES]


def steps_of_data(shape, steps=4, seed=10):
    """Batches whose statistics drift, so the clip limits matter, and upstream gradients."""
    return [(randn(*shape, seed=seed + 2 * i) * (1 + 2 * i) + 3 * i,
             randn(*shape, seed=seed + 2 * i + 1)) for i in range(steps)]


@pytest.mark.parametrize("renorm_cls,bn_cls,shape", RENORM_CASES)
def test_renorm_without_room_to_correct_is_batch_norm(renorm_cls, bn_cls, shape):
    renorm, bn = with_affine([renorm_cls(shape[1], r_max=1, d_max=0), bn_cls(shape[1])], shape[1])
    for x, upstream in steps_of_data(shape):
        ours, theirs = outputs_and_grads(renorm, x, upstream), outputs_and_grads(bn, x, upstream)
        assert torch.equal(ours[0], theirs[0])
        assert_all_close(ours[1:], theirs[1:], rtol=1e-12, atol=1e-12)
        assert torch.equal(renorm.running_mean, bn.running_mean)
        assert torch.equal(renorm.running_var, bn.running_var)
    x = randn(*shape, seed=99)
    assert torch.equal(renorm.eval()(x), bn.eval()(x))
    # One step counter, BN's: the same buffers, counting the same training steps.
    assert list(renorm.state_dict()) == list(bn.state_dict())
    assert renorm.num_batches_tracked.item() == bn.num_batches_tracked.item() == 4


@pytest.mark.parametrize("renorm_cls,shape", RENORM_SHAPES)
def test_unclipped_training_output_is_evaluation_with_pre_step_estimates(renorm_cls, shape):
    layer = with_affine([renorm_cls(shape[1], r_max=1e9, d_max=1e9)], shape[1])[0]
    stat_shape = [1, shape[1]] + [1] * (len(shape) - 2)
    with torch.no_grad():
        layer.running_mean.copy_(randn(shape[1], seed=20))
        layer.running_var.copy_(randn(shape[1], seed=21).abs() + 0.2)
    for x, _ in steps_of_data(shape):
        mean, var = (t.clone().view(stat_shape) for t in (layer.running_mean, layer.running_var))
        expected = (layer.weight.view(stat_shape) * (x - mean) / torch.sqrt(var + layer.eps)
                    + layer.bias.view(stat_shape))
        torch.testing.assert_close(layer(x), expected, **TOL)
        assert not torch.equal(layer.running_mean.view(stat_shape), mean)   # estimates moved


def renorm_by_formula(x, gamma, beta, running_mean, running_var, r_max, d_max, eps=1e-5):
    """Batch Renorm's training output written plainly, r and d detached, for autograd."""
    dims = [0] + list(range(2, x.dim()))
    stat_shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    mu = x.mean(dim=dims, keepdim=True)
    std = torch.sqrt(((x - mu) ** 2).mean(dim=dims, keepdim=True) + eps)
    running_std = torch.sqrt(running_var.view(stat_shape) + eps)
    r = (std / running_std).detach().clamp(1 / r_max, r_max)
    d = ((mu - running_mean.view(stat_shape)) / running_std).detach().clamp(-d_max, d_max)
    return gamma.view(stat_shape) * ((x - mu) / std * r + d) + beta.view(stat_shape)


@pytest.mark.parametrize("renorm_cls,shape", RENORM_SHAPES)
def test_renorm_gradients_equal_autograd_of_the_formula(renorm_cls, shape):
    layer = with_affine([renorm_cls(shape[1], r_max=1.5, d_max=0.5)], shape[1])[0]
    with torch.no_grad():   # some channels clipped, some not
        layer.running_mean.copy_(torch.linspace(-1, 1, shape[1]))
        layer.running_var.copy_(torch.linspace(0.5, 3, shape[1]))
    x, upstream = randn(*shape, seed=30) * 1.3 + 0.2, randn(*shape, seed=31)
    gamma = layer.weight.detach().clone().requires_grad_()
    beta = layer.bias.detach().clone().requires_grad_()
    x_ref = x.clone().requires_grad_()
    y_ref = renorm_by_formula(x_ref, gamma, beta, layer.running_mean.clone(),
                              layer.running_var.clone(), layer.r_max, layer.d_max)
    (y_ref * upstream).sum().backward()
    ours = outputs_and_grads(layer, x, upstream)
    assert_all_close(ours, (y_ref.detach(), x_ref.grad, gamma.grad, beta.grad))
    # The clipping took effect, so this is not BN's gradient.
    bn = with_affine([(BatchNorm1d if x.dim() == 2 else BatchNorm2d)(shape[1])], shape[1])[0]
    assert not torch.allclose(outputs_and_grads(bn, x, upstream)[1], ours[1])


def test_warmup_limits_follow_the_papers_schedule():
    layer = BatchRenorm1d(3, warmup=PAPER_WARMUP)
    expected = {0: (1, 0), 5000: (1, 0), 22500: (2, 4.375), 25000: (1 + 2 * 20 / 35, 5),
                40000: (3, 5), 10 ** 6: (3, 5)}
    for step, (r_max, d_max) in expected.items():
        layer.num_batches_tracked.fill_(step)
        assert layer.limits() == pytest.approx((r_max, d_max), rel=1e-15)
    assert BatchRenorm1d(3, r_max=2, d_max=1).limits() == (2, 1)   # no warm-up: as set
    with pytest.raises(ValueError, match="r_max >= 1 and d_max >= 0"):
        BatchRenorm1d(3, r_max=0.5).limits()
    with pytest.raises(ValueError, match="start <= r_full"):
        BatchRenorm1d(3, warmup=(10, 5, 20))


def train(layer, batches):
    """Plain SGD on the layer's gamma and beta; returns the outputs of every step."""
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    outputs = []
    for x, upstream in batches:
        optimizer.zero_grad()
        y = layer(x)
        (y * upstream).sum().backward()
        optimizer.step()
        outputs.append(y.detach())
    return outputs


def test_warmup_resumes_exactly_from_a_state_dict():
    batches = steps_of_data((6, 4), steps=9, seed=40)
    make = lambda: with_affine([BatchRenorm1d(4, warmup=(2, 7, 5), r_max=1.5, d_max=0.5)], 4)[0]
    straight = make()
    outputs = train(straight, batches)
    # step 0 is BN; by the last step the limits are the full ones
    assert straight.num_batches_tracked.item() == 9 and straight.limits() == (1.5, 0.5)

    first = make()
    before = train(first, batches[:4])
    state = {k: v.clone() for k, v in first.state_dict().items()}
    assert state["num_batches_tracked"].dtype == torch.int64
    resumed = make()
    resumed.load_state_dict(state)
    after = train(resumed, batches[4:])
    for a, b in zip(before + after, outputs, strict=True):
        assert torch.equal(a, b)
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name

    # Without the step count the warm-up restarts, and the run differs: the test can fail.
    restarted = make()
    restarted.load_state_dict({k: v for k, v in state.items() if k != "num_batches_tracked"},
                              strict=False)
    assert not torch.equal(train(restarted, batches[4:5])[0], outputs[4])


def test_renorm_is_a_batch_norm_for_folding_and_the_layer_list():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), BatchRenorm1d(4), nn.ReLU()).double()
    for x, _ in steps_of_data((8, 5), steps=3, seed=50):
        model(x)
    assert batchnorm.batchnorm_layers(model) == [model[1]]
    x = randn(8, 5, seed=60)
    folded = batchnorm.fold_batchnorm(model)
    assert isinstance(folded[1], nn.Identity)
    torch.testing.assert_close(folded(x), model.eval()(x), **TOL)


# ----------------------------------------------------------------------------- by name

@pytest.mark.parametrize("norm,rank,groups,cls", [
    ("ln", 2, None, LayerNorm), ("ln", 4, None, LayerNorm),
    ("gn", 2, 4, GroupNorm), ("gn", 4, 4, GroupNorm),
    ("brn", 2, None, BatchRenorm1d), ("brn", 4, None, BatchRenorm2d),
])
def test_norm_layers_builds_the_relatives(norm, rank, groups, cls):
    [layer] = norms.norm_layers(norm, 8, rank=rank, groups=groups)
    assert type(layer) is cls
    assert layer.weight.shape == (8,)
    if norm == "gn":
        assert layer.num_groups == 4
    assert isinstance(layer, BatchNorm) == (norm == "brn")
    assert isinstance(layer, BatchRenorm) == (norm == "brn")


def test_norm_layers_group_norm_needs_a_group_count():
    assert list(norms.NORMALIZATIONS)[:2] == ["none", "bn"]
    with pytest.raises(ValueError, match="GroupNorm group count.*groups="):
        norms.norm_layers("gn", 8, rank=4)


def test_batchnorm_does_not_import_norms():
    """norms.py builds on batchnorm.py, never the other way round: the lesson stands alone."""
    tree = ast.parse(Path(batchnorm.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "torch" in imported and "norms" not in imported
