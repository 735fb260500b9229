"""studies/scale.py: scale invariance exact in float64 (eps = 0) on the report's MLP with BN, the
page's own invariance check and step watcher measuring what they say, the quick study's JSON and
table, and a failed seed counted in the table, never averaged."""
import copy
import json

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

import experiments
import mlp
from batchnorm import batchnorm_layers
from studies import scale


def double_mlp_and_batch(eps):
    """mlp.py's network with BN in float64 with BN's eps set, and 64 random 'images'."""
    torch.manual_seed(0)
    model = mlp.build_model("bn").double()
    for bn in batchnorm_layers(model):
        bn.eps = eps
    images = torch.randn(64, 1, 28, 28, dtype=torch.float64)
    return model, images, torch.arange(64) % 10


def logits_and_grads(model, images, labels):
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    return logits.detach(), torch.autograd.grad(loss, [m.weight for m in scale.bn_preceded(model)])


def test_the_layers_before_bn_are_the_two_hidden_linear_layers():
    layers = scale.bn_preceded(mlp.build_model("bn"))
    assert [(m.in_features, m.out_features) for m in layers] == [(784, 128), (128, 64)]
    assert scale.bn_preceded(mlp.build_model("none")) == []


@pytest.mark.parametrize("c", [0.1, 10.0])
@pytest.mark.parametrize("index", [0, 1])
def test_without_eps_scaling_a_layer_before_bn_changes_no_output_and_divides_its_gradient(c, index):
    model, images, labels = double_mlp_and_batch(eps=0.0)
    logits, grads = logits_and_grads(model, images, labels)
    layer = scale.bn_preceded(model)[index]
    weight = layer.weight.detach()
    # the gradient is orthogonal to W: the loss does not change along W
    assert abs((weight * grads[index]).sum()) <= 1e-12 * weight.norm() * grads[index].norm()
    with torch.no_grad():
        layer.weight.mul_(c)
    scaled_logits, scaled_grads = logits_and_grads(model, images, labels)
    assert (scaled_logits - logits).abs().max() <= 1e-12 * logits.abs().max()
    assert (c * scaled_grads[index] - grads[index]).norm() <= 1e-10 * grads[index].norm()
    other = 1 - index   # the other layer's gradient does not change at all
    assert (scaled_grads[other] - grads[other]).norm() <= 1e-10 * grads[other].norm()


def test_the_pages_check_finds_the_exact_relation_in_float64_and_eps_behind_any_deviation():
    model, images, labels = double_mlp_and_batch(eps=1e-5)
    before = copy.deepcopy(model.state_dict())
    rows = scale.invariance(model, images, labels)
    assert {row["eps"] for row in rows} == {1e-5, 0.0}
    assert len(rows) == 2 * 2 * len(scale.SCALES)   # eps x layer x c
    for row in rows:
        if row["eps"] == 0.0:
            assert row["output"] < 1e-12 and row["grad"] < 1e-10 and row["cos"] < 1e-12
            assert row["eps_effect"] == 0.0
        else:   # a deviation far above float64's rounding, of the size eps predicts
            assert row["eps_effect"] > 1e-7
            assert 1e-10 < row["output"] < 10 * row["eps_effect"]
    # the model is left exactly as it was, BN's eps included
    assert all(bn.eps == 1e-5 for bn in batchnorm_layers(model)) and model.training
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_the_step_watcher_measures_each_steps_whole_update():
    """Plain SGD with weight decay (no momentum, so the update is -lr (grad + wd W)): the watcher's
    |W| and mean |dW| / |W| per window of 2 steps are those of the updates it saw."""
    torch.manual_seed(0)
    model = mlp.build_model("bn")
    layers = scale.bn_preceded(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.01)
    watch = scale.StepWatch(layers, every=2)
    expected = []
    images, labels = torch.randn(4, 20, 1, 28, 28), torch.randint(0, 10, (4, 20))
    for step in range(4):
        optimizer.zero_grad()
        F.cross_entropy(model(images[step]), labels[step]).backward()
        watch(step + 1)
        expected.append([(0.1 * (m.weight.grad + 0.01 * m.weight)).norm().item()
                         / m.weight.norm().item() for m in layers])
        optimizer.step()
    watch(5)   # after the last step, as train_one does
    assert watch.step == [2, 4]
    for k, layer in enumerate(layers):
        assert watch.weight_norm[k][-1] == pytest.approx(layer.weight.norm().item(), rel=1e-6)
        means = [(expected[0][k] + expected[1][k]) / 2, (expected[2][k] + expected[3][k]) / 2]
        assert watch.effective_step[k] == pytest.approx(means, rel=1e-4)


@pytest.fixture(scope="module")
def quick_scale(tiny_mnist, tmp_path_factory):
    """`experiments.py scale --quick` in this process: its JSON and its figure's folder."""
    root = tmp_path_factory.mktemp("scale")
    experiments.run_studies(experiments.parse_args(
        ["scale", "--quick", "--data-dir", str(tiny_mnist), "--device", "cpu",
         "--out", str(root / "json"), "--figures", str(root / "figures")]))
    return json.loads((root / "json" / "scale.json").read_text()), root / "figures"


def test_the_quick_study_writes_what_its_table_and_figure_need(quick_scale):
    results, figures = quick_scale
    assert experiments.STUDIES["scale"] is scale
    assert (figures / "scale_invariance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["layers"] == ["linear 784->128", "linear 128->64"]
    assert list(results["arms"]) == ["weight decay 1e-4", "weight decay 0"]
    for arm in results["arms"].values():
        assert len(arm["outcome"]) == len(arm["test_acc"]) == 1   # one seed in --quick
        steps = arm["step"][0]
        assert steps and steps == sorted(steps) and steps[0] == results["window"]
        for key in ("weight_norm", "effective_step"):
            assert [len(per_layer) for per_layer in arm[key][0]] == [len(steps)] * 2
        assert all(0 < v < 1 for per_layer in arm["effective_step"][0] for v in per_layer)
    # 2 weight decays x start and end x 2 eps x 2 layers x 2 scales
    checks = results["invariance"]
    assert len(checks) == 2 * 2 * 2 * 2 * 2
    assert max(row["output"] for row in checks if row["eps"] == 0) < 1e-5   # float32 rounding
    text = scale.table(results)
    for needed in ("final test acc", "‖W‖ linear 784->128: start → end", "0 − 1e-4",
                   "c = 0.1: logits", "c = 10: c·∇W", "(float32 rounding)", "(the model's)"):
        assert needed in text


def test_a_failed_seed_is_counted_not_averaged(quick_scale):
    results = copy.deepcopy(quick_scale[0])
    for arm in results["arms"].values():   # five seeds, the last one failed at a wild |W|
        for key in ("test_acc", "outcome", "step", "weight_norm_at_start", "weight_norm",
                    "effective_step", "test_acc_per_epoch"):
            arm[key] = arm[key] * 5
        arm["outcome"] = ["ok"] * 4 + ["failed"]
        arm["test_acc"] = [0.9] * 4 + [0.1]
        arm["weight_norm"] = arm["weight_norm"][:4] + [[[1e6] * len(arm["step"][0])] * 2]
    rows = scale.table(results).splitlines()
    decay = next(row for row in rows if row.startswith("| 1e-4 |"))
    assert "90.00% (90.00%-90.00%), 4 of 5 ok, 1 failed" in decay and "1e+06" not in decay
    assert "not compared: 4 of 5 ok" in scale.table(results)
    for fig in scale.draw(results):
        plt.close(fig)
