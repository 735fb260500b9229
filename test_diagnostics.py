"""studies/diagnostics.py: layer_diagnostics against answers known by construction or computed
by hand, the model left as it was, and the study's quick run on the tiny IDX data (conftest.py's
quick_run)."""
import argparse
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import batchnorm
import cnn
import mlp
import solver
from studies import diagnostics
from studies.common import Study
from studies.runner import run_study
from studies.diagnostics import layer_diagnostics
from studies.figure1 import figure1_network


def images_and_labels(n=32, shape=(1, 28, 28), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_a_relu_layer_with_only_negative_inputs_is_all_dead():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 10))
    images, labels = torch.rand(16, 4) + 0.1, torch.arange(16) % 10   # every input positive
    with torch.no_grad():
        model[0].weight.uniform_(-2.0, -1.0)   # so every ReLU input is negative
    assert layer_diagnostics(model, images, labels)["layers"][0]["dead"] == 1.0
    with torch.no_grad():
        model[0].weight.neg_()   # and now every one positive
    layer = layer_diagnostics(model, images, labels)["layers"][0]
    assert layer["dead"] == 0.0 and layer["saturated"] is None


def test_a_sigmoid_layer_driven_to_large_inputs_is_all_saturated():
    model = nn.Sequential(nn.Linear(2, 5, bias=False), nn.Sigmoid(), nn.Linear(5, 10))
    images = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]).repeat(8, 1)
    with torch.no_grad():
        model[0].weight.uniform_(50.0, 60.0)   # inputs of +-50 or more: 0 or 1 to 1e-21
    layer = layer_diagnostics(model, images, torch.arange(16) % 10)["layers"][0]
    assert layer["saturated"] == 1.0 and layer["dead"] is None
    with torch.no_grad():
        model[0].weight.mul_(1e-4)   # inputs of +-0.006 at most: outputs near 0.5
    layer = layer_diagnostics(model, images, torch.arange(16) % 10)["layers"][0]
    assert layer["saturated"] == 0.0


def test_numbers_match_a_hand_computation_with_bn():
    torch.manual_seed(0)
    model = mlp.build_model("bn")
    images, labels = images_and_labels()
    report = layer_diagnostics(model, images, labels)
    assert [layer["layer"] for layer in report["layers"]] == [
        "Linear(128, 784) -> ReLU", "Linear(64, 128) -> ReLU"]
    # By hand, on a copy in training mode: Flatten, Linear, BN, ReLU | Linear, BN, ReLU | Linear
    by_hand = copy.deepcopy(model).train()
    first = by_hand[:4](images)
    second = by_hand[4:7](first)
    loss = F.cross_entropy(by_hand[7](second), labels)
    weights = (by_hand[1].weight, by_hand[4].weight)
    *act_grads, grad_w1, grad_w2 = torch.autograd.grad(loss, [first, second, *weights])
    assert report["loss"] == pytest.approx(loss.item(), rel=1e-6)
    for layer, act, act_grad, weight, grad in zip(report["layers"], (first, second), act_grads,
                                                   weights, (grad_w1, grad_w2)):
        assert layer["grad_to_weight"] == pytest.approx((grad.std() / weight.std()).item(),
                                                        rel=1e-5)
        assert layer["activation"]["std"] == pytest.approx(act.std().item(), rel=1e-5)
        assert layer["grad"]["std"] == pytest.approx(act_grad.std().item(), rel=1e-5)
        assert sum(layer["activation"]["counts"]) == act.numel() == len(images) * layer["units"]
        assert len(layer["activation"]["edges"]) == len(layer["activation"]["counts"]) + 1 == 51
        dead = (act <= 0).all(dim=0).float().mean().item()
        assert layer["dead"] == dead == 0.0   # BN centres every unit: none is dead at the start


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("with_grads", [False, True])
def test_the_model_is_left_exactly_as_it_was(mode, with_grads):
    torch.manual_seed(0)
    model = mlp.build_model("bn")
    images, labels = images_and_labels()
    if with_grads:   # a model in the middle of a step: its .grad must survive
        F.cross_entropy(model(images[:8]), labels[:8]).backward()
    getattr(model, mode)()
    model[2].training = not model[2].training   # one module's own mode differs from the rest
    before = copy.deepcopy(model)   # deepcopy leaves .grad behind: kept on their own
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    layer_diagnostics(model, images, labels)
    for (name, p), q, grad in zip(model.named_parameters(), before.parameters(), grads):
        assert torch.equal(p, q), name
        assert (p.grad is None) == (grad is None) == (not with_grads), name
        assert grad is None or torch.equal(p.grad, grad), name
    for layer, old in zip(batchnorm.batchnorm_layers(model), batchnorm.batchnorm_layers(before)):
        assert torch.equal(layer.running_mean, old.running_mean)
        assert torch.equal(layer.running_var, old.running_var)
    assert [m.training for m in model.modules()] == [m.training for m in before.modules()]
    assert all(not m._forward_hooks for m in model.modules())   # the hooks are removed


def test_conv_units_are_channels_at_a_position_and_the_sigmoid_net_has_three_layers():
    torch.manual_seed(0)
    images, labels = images_and_labels(8)
    layers = layer_diagnostics(cnn.build_model("bn"), images, labels)["layers"]
    assert [layer["units"] for layer in layers] == [4 * 28 * 28, 4 * 14 * 14]
    sigmoid = layer_diagnostics(figure1_network(False), images, labels)
    assert len(sigmoid["layers"]) == 3 and all(l["dead"] is None for l in sigmoid["layers"])
    with pytest.raises(ValueError, match="no ReLU"):
        layer_diagnostics(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), images, labels)


def test_whole_epochs_give_exactly_the_steps():
    assert diagnostics.whole_epochs(1000, 100, 60_000) == (2, 50_000)
    for steps, n_images in ((20, 1200), (20, 300), (7, 1000)):
        epochs, images = diagnostics.whole_epochs(steps, 100, n_images)
        assert epochs * images // 100 == steps and images <= n_images


def test_the_quick_study_records_six_networks_step_by_step(quick_run):
    results, figures = quick_run[0]["diagnostics"], quick_run[1]
    for name in diagnostics.FIGURES:
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(results["provenance"]) >= {"seeds", "torch", "threads", "cpu", "command"}
    seeds, steps = results["provenance"]["seeds"], results["steps"]
    assert results["epochs"] * results["train_images"] // 100 == steps
    networks = results["networks"]
    assert set(networks) == {"mlp", "mlp_n01", "sigmoid"}
    for name, record in networks.items():
        n_hidden = 3 if name == "sigmoid" else 2
        for arm in ("no_bn", "bn"):
            r = record[arm]
            assert len(r["outcome"]) == len(r["test_acc"]) == len(r["start"]) == len(seeds)
            assert all(o in ("ok", "failed", "diverged") for o in r["outcome"])
            ratios = r["log10_update_ratio"]
            assert len(r["weights"]) == n_hidden + 1 == len(ratios["ok_mean"])   # and the output
            assert ratios["every"] == 1 and ratios["step"] == list(range(1, steps + 1))
            for k, (outcome, done, start, end) in enumerate(zip(r["outcome"], r["steps_done"],
                                                               r["start"], r["end"])):
                if outcome != "diverged":
                    assert done == steps and end is not None
                assert len(ratios["last"][k]) == n_hidden + 1
                for diag in (start, end):
                    assert len(diag["layers"]) == n_hidden
                    assert all(math.isfinite(l["grad_to_weight"]) for l in diag["layers"])
                    # histograms only where layer_health.png draws them, as it draws them
                    drawn = name == diagnostics.DRAWN and k == r["drawn_seed"]
                    for l in diag["layers"]:
                        assert ("counts" in l["activation"]) == drawn == ("counts" in l["grad"])
                        if drawn:
                            assert sum(l["activation"]["counts"]) == (results["probe_images"]
                                                                      * l["units"])
                            assert all(isinstance(c, int) for c in l["activation"]["counts"])
            ok = [verdict == "ok" for verdict in r["outcome"]]
            assert all(mean is not None and len(mean) == steps and all(map(math.isfinite, mean))
                       for mean in ratios["ok_mean"]) == any(ok)
            assert [run["seed"] for run in ratios["runs"]] == [
                seed for seed, is_ok in zip(seeds, ok) if not is_ok]
            if arm == "bn" and name != "sigmoid":   # BN centres every unit at the start
                assert all(l["dead"] == 0.0 for d in r["start"] for l in d["layers"])
    # the same initial weights N(0, 1) with and without BN: without BN they are 100 times larger
    # than the default's, and the activations follow; BN divides the scale out
    bad, good = networks["mlp_n01"], networks["mlp"]
    assert bad["no_bn"]["start"][0]["layers"][0]["weight_std"] == pytest.approx(1.0, rel=0.02)
    assert (bad["no_bn"]["start"][0]["layers"][1]["activation"]["std"]
            > 10 * bad["bn"]["start"][0]["layers"][1]["activation"]["std"])
    assert (bad["bn"]["start"][0]["layers"][1]["activation"]["std"]
            == pytest.approx(good["bn"]["start"][0]["layers"][1]["activation"]["std"], rel=0.1))


def test_a_diverging_run_stops_at_the_step_whose_loss_is_not_finite(tiny_mnist, tmp_path,
                                                                   monkeypatch):
    """At rate 1 the N(0, 1) network without BN diverges: its update ratios stop at the last
    update before the first non-finite loss, as many as the steps that a per-step window
    (disp_freq 1) completes before solver.py stops the run; the tables and figures draw it."""
    args = argparse.Namespace(quick=True, jobs=1, seed=0, seeds=1, out=str(tmp_path),
                              figures=str(tmp_path))
    study = Study(args, solver.load_mnist(tiny_mnist, torch.device("cpu")))
    settings = diagnostics.settings

    def diverging(study):
        steps, probe_size, config, data, probe = settings(study)
        return steps, probe_size, {**config, "learning_rate": 1.0}, data, probe

    monkeypatch.setattr(diagnostics, "settings", diverging)
    results = run_study(diagnostics, study)
    record = results["networks"]["mlp_n01"]["no_bn"]
    assert record["outcome"] == ["diverged"] and record["end"] == [None]
    _, _, config, data, _ = diverging(study)
    model = study.model(diagnostics.mlp_normal(False), seed=0)
    history, diverged = study.fit(model, {**config, "disp_freq": 1}, data=data, seed=0)
    done = record["steps_done"][0]
    assert diverged and 0 < done == len(history["train"]["iter"]) < results["steps"]
    run, = record["log10_update_ratio"]["runs"]   # the diverged run, on its own, to its end
    assert run["outcome"] == "diverged" and run["step"] == list(range(1, done + 1))
    assert all(len(ratios) == done for ratios in run["ratios"])
    assert record["log10_update_ratio"]["ok_mean"] == [None] * len(record["weights"])
    assert all((tmp_path / name).exists() for name in diagnostics.FIGURES)


def test_update_ratio_never_averages_a_failed_run():
    """Two ok seeds and a failed one that ran every step: the drawn mean is the ok seeds'
    alone, the failed run a line of its own; the table's ratio likewise, the failed run's
    beside it as a range of one."""
    logs = [[[-2.0, -2.0, -2.0, -2.0]], [[0.5, 0.5, 0.5, 0.5]], [[-1.0, -1.0, -1.0, -3.0]]]
    outcomes = ["ok", "failed", "ok"]
    record = diagnostics.ratio_record(logs, outcomes, [0, 1, 2], 4)
    lines = diagnostics.update_ratio_lines({"log10_update_ratio": record})
    assert lines == [(0, "ok mean", [1, 2, 3, 4], [-1.5, -1.5, -1.5, -2.5]),
                     (0, "failed", [1, 2, 3, 4], [0.5, 0.5, 0.5, 0.5])]
    assert diagnostics.by_outcome(record["last"], outcomes, "+.2f") == (
        "ok 2: -1.75 (-2.00--1.50); failed 1: +0.50")
    # in windows of steps where training is long: every mean over its window's steps
    long = diagnostics.ratio_record([[[float(k) for k in range(1, 1001)]]], ["ok"], [0], 1000)
    assert record["every"] == 1 and long["every"] == 5 and len(long["ok_mean"][0]) == 200
    assert long["step"][:2] == [5, 10] and long["ok_mean"][0][:2] == [3.0, 8.0]
    assert long["last"] == [[950.5]]   # the mean of steps 901 .. 1000


def test_a_failed_seed_is_left_out_of_the_tables_means(quick_run):
    results = copy.deepcopy(quick_run[0]["diagnostics"])
    record = results["networks"]["mlp"]["bn"]
    record["outcome"] = ["failed"]
    text = diagnostics.table(results)
    row = next(line for line in text.splitlines() if line.startswith("| MLP 784-128-64-10"))
    assert row.split(" | ")[2] == "1 failed"   # its accuracy is in no mean
    ratio_row = next(line for line in text.splitlines()
                     if line.startswith("| MLP 784-128-64-10, default init, with BN | Linear"))
    assert "failed 1: " in ratio_row and "ok" not in ratio_row


def test_layer_health_draws_values_spanning_decades_on_a_symlog_axis():
    """A diverging layer's 1e12 beside a healthy 100 gets no x axis with a multiplier: symlog,
    linear within a tenth of the narrower spread, a few powers of ten labelled."""
    healthy, start = {"range": [0.0, 4.0], "std": 0.6}, {"range": [0.0, 100.0], "std": 16.9}
    exploded = {"range": [0.0, 1e12], "std": 1.37e10}
    assert diagnostics.x_scale([healthy]) == ("linear", None)
    assert diagnostics.x_scale([start, {"range": [0.0, 0.0], "std": 0.0}]) == ("linear", None)
    scale, linthresh = diagnostics.x_scale([start, exploded])
    assert scale == "symlog" and linthresh == pytest.approx(1.69)
    ticks = diagnostics.symlog_ticks(linthresh, [start, exploded])
    assert ticks[0] == 0.0 and ticks[-1] == 1e12 and len(ticks) <= 6
    signed = diagnostics.symlog_ticks(1e-4, [{"range": [-1e8, 1e8], "std": 1e7}])
    assert signed == sorted(signed) and -1e8 in signed and 1e8 in signed and 0.0 in signed
