"""experiments.py: every study in --quick mode on the tiny IDX data (conftest.py's quick_run),
writing its JSON and figure, with at least one assertion per study that a broken study would
fail; the studies' shared pieces: the failure rule, provenance, seeds."""
import argparse
import copy

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

import batchnorm
import experiments
import mlp
from studies.common import CHANCE, draw_over_seeds
from studies.small_batch import population_outcome


def test_every_study_writes_its_json_and_its_figure(quick_run):
    results, figures = quick_run
    assert {"figure1", "lr", "batch", "momentum", "init", "population", "detach"} <= set(results)
    drawn = [name for names in experiments.FIGURES.values() for name in names]
    for name in drawn:
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"bn_paper_figure1.png", "lr_robustness.png", "batch_size.png",
            "momentum_convention.png", "init_scale.png", "population_statistics.png",
            "detached_statistics.png"} <= set(drawn)


def test_figure1_network_is_the_papers():
    for bn in (False, True):
        network = experiments.figure1_network(bn)
        linears = [m for m in network if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(784, 100), (100, 100), (100, 100), (100, 10)]
        kinds = [type(m).__name__ for m in network]
        expected = ["Linear", *(["BatchNorm1d"] if bn else []), "Sigmoid"] * 3
        assert kinds == ["Flatten", *expected, "Linear"]
        assert all((m.bias is None) == bn for m in linears[:3])   # beta replaces the bias before BN
        assert linears[3].bias is not None
        assert abs(linears[0].weight.std().item() - 0.01) < 0.001   # N(0, 0.01^2)


def test_figure1_records_accuracy_and_ordered_percentiles(quick_run):
    results, _ = quick_run
    for key in ("no_bn", "bn"):
        record = results["figure1"][key]
        assert record["step"] and len(record["test_acc"]) == len(record["step"])
        assert all(a <= b <= c for a, b, c in zip(record["p15"], record["p50"], record["p85"]))
    assert results["figure1"]["bn"]["p50"] != results["figure1"]["no_bn"]["p50"]


def test_lr_marks_the_failures_of_the_network_without_bn(quick_run):
    lr = quick_run[0]["lr"]
    assert len(lr["rates"]) >= 7 and lr["rates"][0] <= 0.01 and lr["rates"][-1] >= 10
    largest = lr["no_bn"][-1]
    assert largest["outcome"] == "diverged" and largest["test_acc"] is None
    for point in lr["no_bn"] + lr["bn"]:
        if point["outcome"] == "stuck":
            assert point["test_acc"] <= CHANCE
        if point["outcome"] == "ok":
            assert point["test_acc"] > CHANCE


def test_batch_measures_the_train_eval_gap(quick_run):
    batch = quick_run[0]["batch"]
    assert len(batch["sizes"]) >= 6 and batch["sizes"][0] == 2
    smallest = batch["rows"][0]
    assert smallest["bn_eval"] != smallest["bn_batch_stats"]   # a forgotten model.eval() is measured


def test_batch_statistics_accuracy_leaves_the_running_estimates_alone(tiny_mnist):
    model = mlp.build_model("bn")
    before = [layer.running_mean.clone() for layer in batchnorm.batchnorm_layers(model)]
    experiments.batch_statistics_accuracy(model, torch.randn(20, 1, 28, 28), torch.zeros(20, dtype=torch.int64), 4)
    assert all(torch.equal(a, layer.running_mean) for a, layer in zip(before, batchnorm.batchnorm_layers(model)))


def test_momentum_01_convention_follows_the_last_batches_by_hand(quick_run):
    runs = quick_run[0]["momentum"]["runs"]
    assert {(r["batch"], r["momentum"]) for r in runs} == {(100, 0.9), (100, 0.1), (8, 0.9), (8, 0.1)}
    for run in runs:
        momentum, batch_means, running = run["momentum"], run["batch_mean"], run["running_mean"]
        assert len(batch_means) == len(running) >= 2
        for t in range(1, len(running)):   # eq. 2.2 step by step, from the recorded batch means
            expected = momentum * running[t - 1] + (1 - momentum) * batch_means[t]
            assert expected == pytest.approx(running[t], rel=1e-4, abs=1e-5)
    short = next(r for r in runs if r["momentum"] == 0.1 and len(r["running_mean"]) >= 12)
    # Under 0.1 the running mean is, to 1e-10 of the old value, the last ten batches weighted by hand
    by_hand = sum(0.9 * 0.1 ** k * short["batch_mean"][-1 - k] for k in range(10))
    assert by_hand == pytest.approx(short["running_mean"][-1], rel=1e-4, abs=1e-5)


def test_init_covers_the_grid_and_bn_rescues_the_smallest_scale(quick_run):
    init = quick_run[0]["init"]
    assert len(init["scales"]) >= 9 and init["scales"][0] <= 1e-4 and init["scales"][-1] >= 10
    assert init["no_bn"][0]["outcome"] == "stuck"        # weights of 1e-4: nothing gets through
    assert init["bn"][0]["test_acc"] > init["no_bn"][0]["test_acc"]


def test_population_statistics_differ_from_the_momentum_estimates(quick_run):
    population = quick_run[0]["population"]
    for name in ("mlp", "cnn"):
        record = population["models"][name]
        assert record["epoch"] == list(range(1, population["epochs"] + 1))
        gaps = record["gaps"][-1]
        assert len(gaps) == 2 and all(0 < g["mean"] < float("inf") and 0 < g["var"] for g in gaps)


def test_detach_shows_the_bias_gradient_is_zero_only_with_the_true_gradient(quick_run):
    detach = quick_run[0]["detach"]
    true_ratio = max(b / w for b, w in zip(detach["true"]["bias_grad"], detach["true"]["weight_grad"]))
    detached_ratio = min(b / w for b, w in zip(detach["detached"]["bias_grad"], detach["detached"]["weight_grad"]))
    assert true_ratio < 1e-5 < 1e-3 < detached_ratio


def test_an_unknown_study_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        experiments.main(["fig1"])
    assert stop.value.code == 2 and "invalid choice: 'fig1'" in capsys.readouterr().err


def test_missing_mnist_is_one_line(tmp_path, capsys, monkeypatch):
    def no_mnist(data_dir, device):
        raise experiments.plumbing.SolverError(f"MNIST is not in {data_dir}/MNIST/raw")
    monkeypatch.setattr(experiments.solver, "load_mnist", no_mnist)
    with pytest.raises(SystemExit) as stop:
        experiments.main(["lr", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 1 and err.strip() == f"error: MNIST is not in {tmp_path}/MNIST/raw"


# ----------------------------------------------------------------------------- shared pieces

class Constant(nn.Module):
    """A 'network' that answers the same class for every image."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer

    def forward(self, x):
        return nn.functional.one_hot(torch.full((len(x),), self.answer), 10).float()


def test_outcome_is_one_rule_for_every_study():
    images = torch.randn(30, 1, 28, 28)
    ones = torch.ones(30, dtype=torch.int64)
    # one class predicted: failed whatever its accuracy (here 100%)
    assert experiments.outcome(Constant(1), images, ones, train_loss=0.3) == ("failed", 1.0)
    assert experiments.outcome(Constant(1), images, ones, float("nan"))[0] == "diverged"
    assert experiments.outcome(Constant(1), images, ones, float("inf")) == ("diverged", None)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    labels = model(images).argmax(dim=1).detach()   # what it answers: right on every image
    if labels.unique().numel() > 2:
        assert experiments.outcome(model, images, labels, 0.1) == ("ok", 1.0)
    wrong = (labels + 1) % 10                        # wrong on every image: accuracy 0 < 20%
    assert experiments.outcome(model, images, wrong, 0.1) == ("failed", 0.0)
    assert model.training   # put back into training mode


def quick_study(data, seed=0, seeds=1):
    args = argparse.Namespace(quick=True, seed=seed, seeds=seeds, out="unused", figures="unused")
    return experiments.Study(args, data)


def test_a_diverging_arm_is_labelled_and_crashes_nothing(tiny_mnist):
    study = quick_study(experiments.solver.load_mnist(tiny_mnist, torch.device("cpu")))
    model = study.model(lambda: mlp.build_model("none"), seed=0)
    history, label, acc = study.train(model, study.config(learning_rate=1e30), seed=0)
    assert (label, acc) == ("diverged", None)   # a label, not an exception
    fig, ax = plt.subplots()   # and it is drawn as a marker at the bottom, not a point of a line
    draw_over_seeds(ax, [1, 2], [[0.9, 0.8], [acc, 0.7]], [["ok", "ok"], [label, "ok"]],
                    "tab:blue", "arm")
    assert [tuple(p) for p in ax.collections[-1].get_offsets()] == [(2.0, 0.0)]
    assert list(ax.lines[0].get_ydata()) == [pytest.approx(0.85), 0.7]
    plt.close(fig)


def test_provenance_names_seeds_versions_threads_cpu_and_command(quick_run):
    for name in ("small_batch", "placement"):
        provenance = quick_run[0][name]["provenance"]
        assert provenance["seeds"] == [0] and provenance["torch"] == torch.__version__
        assert provenance["threads"] == torch.get_num_threads()
        assert torch.backends.cpu.get_cpu_capability() in provenance["cpu"]
        assert provenance["command"].startswith("python ")


def test_seeds_n_runs_seeds_seed_to_seed_plus_n_minus_1():
    assert quick_study((torch.zeros(1, 1),), seed=5, seeds=3).seeds == [5, 6, 7]


# ----------------------------------------------------------------------------- small_batch, placement

def test_small_batch_has_every_arm_at_every_batch_size_per_seed(quick_run):
    study = quick_run[0]["small_batch"]
    assert study["sizes"][0] == 2 and study["images"] <= 200
    for model in ("mlp", "cnn"):
        record = study["models"][model]
        assert set(record) == {"bn", "bn_population", "brn", "gn", "ln", "none"}
        for arm in record.values():
            assert len(arm["test_acc"]) == len(arm["outcome"]) == len(study["sizes"])
            assert all(len(seeds) == 1 for seeds in arm["test_acc"])
            assert all(o in ("ok", "failed", "diverged") for seeds in arm["outcome"] for o in seeds)


def test_population_arm_evaluates_a_recalibrated_copy_of_the_bn_run():
    torch.manual_seed(0)
    model = mlp.build_model("bn")
    train_x, test_x = torch.randn(40, 1, 28, 28), torch.randn(30, 1, 28, 28)
    test_y = torch.randint(0, 10, (30,))
    model(train_x[:8])   # one training step's statistics: running estimates far from the data's
    running = [layer.running_mean.clone() for layer in batchnorm.batchnorm_layers(model)]
    label, acc = population_outcome(model, train_x, 4, test_x, test_y, 0.1)
    by_hand = batchnorm.recalibrate(copy.deepcopy(model), train_x.split(4))
    assert acc == (by_hand(test_x).argmax(dim=1) == test_y).float().mean().item()
    assert acc != experiments.outcome(model, test_x, test_y, 0.1)[1]   # not the running ones
    assert all(torch.equal(r, layer.running_mean)                      # the run is untouched
               for r, layer in zip(running, batchnorm.batchnorm_layers(model)))


def test_placement_pairs_the_two_arms_by_seed(quick_run):
    study = quick_run[0]["placement"]
    for model in ("mlp", "cnn"):
        arms = study["models"][model]
        assert len(arms["before"]["test_acc"]) == len(arms["after"]["test_acc"]) == 1
        difference = arms["after"]["test_acc"][0] - arms["before"]["test_acc"][0]
        assert arms["after_minus_before"] == [pytest.approx(difference)]
        assert len(arms["before"]["test_acc_per_epoch"][0]) == study["epochs"]


def test_bn_after_the_relu_keeps_the_bias_before_it():
    from studies.placement import BUILDERS
    after = BUILDERS["mlp"]["after"]()
    kinds = [type(m).__name__ for m in after]
    assert kinds[1:4] == ["Linear", "ReLU", "BatchNorm1d"] and after[1].bias is not None
    before = BUILDERS["mlp"]["before"]()
    assert [type(m).__name__ for m in before][1:4] == ["Linear", "BatchNorm1d", "ReLU"]
