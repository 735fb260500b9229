"""experiments.py: every study in --quick mode on the tiny IDX data (conftest.py's quick_run),
writing its JSON and figure, with at least one assertion per study that a broken study would
fail; the studies' shared pieces: the failure rule, provenance, seeds."""
import argparse
import json
import copy

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

import batchnorm
import experiments
import mlp
import plot
import solver
from studies.batch import batch_statistics_accuracy
from studies.common import (Study, draw_failures, draw_over_seeds, failure_rows, outcome,
                            seeds_cell, sweep_table)
from studies.runner import run_study
from studies.figure1 import figure1_network
from studies.small_batch import population_outcome


def test_every_study_writes_its_json_and_its_figure(quick_run):
    results, figures = quick_run
    assert set(results) == set(experiments.STUDIES) and len(experiments.STUDIES) == 14
    drawn = [name for page in experiments.STUDIES.values() for name in page.FIGURES]
    for name in drawn:
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"bn_paper_figure1.png", "lr_robustness.png", "batch_size.png",
            "momentum_convention.png", "init_scale.png", "population_statistics.png",
            "detached_statistics.png"} <= set(drawn)


def test_every_study_figure_reads_at_readme_width(quick_run):
    """plot.readme_problems: at most plot.WIDTH inches, two panels across, no axis with an
    offset or multiplier beside its ticks, for every study's figures from its quick JSON."""
    results, _ = quick_run
    for name, page in experiments.STUDIES.items():
        for figure, fig in zip(page.FIGURES, page.draw(results[name]), strict=True):
            assert plot.readme_problems(fig) == [], figure
            plt.close(fig)


@pytest.mark.parametrize("init,std", [("glorot", (2 / (784 + 100)) ** 0.5), ("small", 0.01)])
def test_figure1_network_is_the_papers(init, std):
    for bn in (False, True):
        network = figure1_network(bn, init)
        linears = [m for m in network if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [
            (784, 100), (100, 100), (100, 100), (100, 10)]
        kinds = [type(m).__name__ for m in network]
        expected = ["Linear", *(["BatchNorm1d"] if bn else []), "Sigmoid"] * 3
        assert kinds == ["Flatten", *expected, "Linear"]
        assert all((m.bias is None) == bn for m in linears[:3])   # beta replaces the bias
        assert linears[3].bias is not None
        assert abs(linears[0].weight.std().item() - std) < 0.1 * std


def test_figure1_arms_use_the_stated_initialisations(quick_run):
    from studies.figure1 import ARMS
    assert ARMS == {"bn": (True, "glorot"), "no_bn": (False, "glorot"),
                    "no_bn_small_init": (False, "small")}
    results = quick_run[0]["figure1"]
    assert "Glorot" in results["rule"] and "N(0, 0.01^2)" in results["rule"]
    for key in ARMS:
        record = results[key]
        assert record["step"] and len(record["test_acc"]) == len(record["outcome"]) == 1
        assert len(record["test_acc"][0]) == len(record["step"])   # per seed, over the steps
        for p15, p50, p85 in zip(record["p15"], record["p50"], record["p85"]):
            assert all(a <= b <= c for a, b, c in zip(p15, p50, p85))
    assert results["bn"]["p50"] != results["no_bn"]["p50"]


def test_lr_grid_pins_each_edge_and_labels_every_run(quick_run):
    from studies.lr import RATES
    assert RATES[0] <= 0.01 and RATES[-1] >= 30
    assert all(b / a <= 10 ** 0.25 * 1.01 for a, b in zip(RATES, RATES[1:]))
    lr = quick_run[0]["lr"]
    largest = lr["no_bn"][-1]
    assert largest["outcome"] == ["diverged"] and largest["test_acc"] == [None]
    for point in lr["no_bn"] + lr["bn"]:
        for verdict, acc in zip(point["outcome"], point["test_acc"]):
            assert verdict in ("ok", "failed", "diverged")
            if verdict == "ok":
                assert acc >= 0.2
            if verdict == "diverged":
                assert acc is None


def test_batch_has_both_rate_rules_three_evaluations_and_the_batch_2_mechanism(quick_run):
    batch = quick_run[0]["batch"]
    assert batch["sizes"][0] == 2 and batch["sizes"][-1] >= 32
    constant, linear = batch["arms"]["constant"], batch["arms"]["linear"]
    assert constant["lr"] == [0.1] * len(batch["sizes"])
    assert linear["lr"] == [0.1 * s / 100 for s in batch["sizes"]]
    smallest, largest = 0, -1
    for arm in (constant, linear):
        assert len(arm["bn_population"][smallest]) == len(arm["bn_batch_stats"][smallest]) == 1
    # two values per channel: x_hat is +-1 (up to eps and ties); at 32 or more, almost never
    assert linear["x_hat_near_one"][smallest][0] > 0.5 > linear["x_hat_near_one"][largest][0]
    assert linear["first_grad_norm_bn"][smallest][0] > 0


def test_batch_statistics_accuracy_leaves_the_running_estimates_alone(tiny_mnist):
    model = mlp.build_model("bn")
    before = [layer.running_mean.clone() for layer in batchnorm.batchnorm_layers(model)]
    model.eval()
    batch_statistics_accuracy(model, torch.randn(20, 1, 28, 28),
                              torch.zeros(20, dtype=torch.int64), 4)
    assert all(torch.equal(a, layer.running_mean)
               for a, layer in zip(before, batchnorm.batchnorm_layers(model)))
    assert not model.training   # and its mode


def test_momentum_arms_train_identically_and_01_follows_the_last_batches(quick_run):
    momentum = quick_run[0]["momentum"]
    runs = momentum["runs"]
    assert {(r["batch"], r["momentum"]) for r in runs} == {
        (100, 0.9), (100, 0.1), (8, 0.9), (8, 0.1)}
    assert all(pair["trained_identically"] for pair in momentum["paired"])
    for pair in momentum["paired"]:
        assert 0 <= pair["share_09_wins"] + pair["share_ties"] <= 1
    assert all(run["outcome"] in ("ok", "failed", "diverged") for run in runs)   # the rule
    for run in runs:
        momentum, batch_means, running = run["momentum"], run["batch_mean"], run["running_mean"]
        assert len(batch_means) == len(running) >= 2
        for t in range(1, len(running)):   # eq. 2.2 step by step, from the recorded batch means
            expected = momentum * running[t - 1] + (1 - momentum) * batch_means[t]
            assert expected == pytest.approx(running[t], rel=1e-4, abs=1e-5)
    short = next(r for r in runs if r["momentum"] == 0.1 and len(r["running_mean"]) >= 12)
    # Under 0.1 the running mean is, to 1e-10 of the old value, the last ten batches by hand
    by_hand = sum(0.9 * 0.1 ** k * short["batch_mean"][-1 - k] for k in range(10))
    assert by_hand == pytest.approx(short["running_mean"][-1], rel=1e-4, abs=1e-5)


def test_init_has_cs231ns_deeper_network_train_accuracy_and_the_default_scales(quick_run):
    init = quick_run[0]["init"]
    assert init["scales"][0] <= 1e-4 and init["scales"][-1] >= 10
    deep = init["networks"]["deep"]
    assert deep["widths"] == [784] + [50] * 7
    # the JSON's floats are rounded to 5 significant digits (studies/runner.py)
    assert deep["kaiming"] == pytest.approx([(2 / 784) ** 0.5, (2 / 50) ** 0.5], rel=1e-4)
    assert deep["torch"] == pytest.approx([(1 / (3 * 784)) ** 0.5, (1 / (3 * 50)) ** 0.5],
                                          rel=1e-4)
    mlp_record = init["networks"]["mlp"]
    assert mlp_record["no_bn"][0]["outcome"] == ["failed"]   # weights of 1e-4: nothing gets through
    assert mlp_record["bn"][0]["test_acc"][0] > mlp_record["no_bn"][0]["test_acc"][0]
    for point in mlp_record["bn"]:
        assert len(point["measured"]) == 1   # the train accuracy, per seed


def test_population_statistics_differ_from_the_momentum_estimates(quick_run):
    population = quick_run[0]["population"]
    for name in ("mlp", "cnn"):
        record = population["models"][name]
        assert record["epoch"] == list(range(1, population["epochs"] + 1))
        gaps = record["gaps"][0][-1]   # seed 0, the last epoch
        assert len(gaps) == 2 and all(0 < g["mean"] < float("inf") and 0 < g["var"] for g in gaps)
    small = population["small_batches"]["mlp"]
    assert small["batch"] == [2, 4, 8] and all(len(seeds) == 1 for seeds in small["running_acc"])


def test_population_and_momentum_record_outcomes_and_leave_failed_runs_out(quick_run):
    from studies import momentum as momentum_page, population as population_page
    population = copy.deepcopy(quick_run[0]["population"])
    verdicts = ("ok", "failed", "diverged")
    for record in population["models"].values():
        assert len(record["outcome"]) == len(record["population_outcome"]) == 1
        assert set(record["outcome"] + record["population_outcome"]) <= set(verdicts)
    small = population["small_batches"]["mlp"]
    assert all(len(seeds) == 1 and seeds[0] in verdicts
               for seeds in small["outcome"] + small["population_outcome"])
    # a failed run's numbers are in no mean: the table counts it instead
    population["models"]["mlp"]["outcome"] = ["failed"]
    row = next(line for line in population_page.table(population).splitlines()
               if line.startswith("| mlp | epoch 1 |"))
    assert row.startswith("| mlp | epoch 1 | 1 failed |") and "not compared: 0 of 1 ok" in row

    momentum = copy.deepcopy(quick_run[0]["momentum"])
    runs = {(r["batch"], r["seed"], r["momentum"]): r for r in momentum["runs"]}
    assert all(p["outcomes"] == [runs[p["batch"], p["seed"], m]["outcome"] for m in (0.9, 0.1)]
               for p in momentum["paired"])
    runs[8, 0, 0.1]["outcome"] = "failed"   # the pair's other arm stays ok
    next(p for p in momentum["paired"] if p["batch"] == 8)["outcomes"][1] = "failed"
    accuracy, steps = momentum_page.table(momentum).split("\n\n")
    row = next(line for line in accuracy.splitlines() if line.startswith("| 8 |"))
    assert row.endswith("| 1 failed | not compared: 0 of 1 ok |")
    row = next(line for line in steps.splitlines() if line.startswith("| 8 |"))
    high_std = f"{runs[8, 0, 0.9]['running_mean_std']:.3f}"
    assert row.split(" | ")[2:7] == ["-", "not compared: 0 of 1 ok", "-", "-",
                                    f"{high_std} / - |"]   # shares: over pairs both ok
    plt.close(momentum_page.draw(momentum)[0])


def test_detach_shows_the_bias_gradient_is_zero_only_with_the_true_gradient(quick_run):
    arms = quick_run[0]["detach"]["arms"]
    ratios = lambda arm: [b / w for bs, ws in zip(arm["bias_grad"], arm["weight_grad"])
                          for b, w in zip(bs, ws)]
    assert max(ratios(arms["true"])) < 1e-5 < 1e-3 < min(ratios(arms["detached"]))
    assert not arms["detached_no_bias"]["bias_norm"]             # no bias to follow
    assert all(g == 0 for seed in arms["detached_beta_frozen"]["beta_grad"] for g in seed)
    assert all(g > 0 for seed in arms["detached"]["beta_grad"] for g in seed)
    from studies.detach import mlp_with_bias   # mlp.py's BN network, with the biases
    biased, plain = mlp_with_bias(), mlp.build_model("bn")
    assert [type(m) for m in biased] == [type(m) for m in plain]
    assert [m.bias is not None for m in biased if isinstance(m, nn.Linear)] == [True, True, False]
    assert all(m.bias is None for m in plain if isinstance(m, nn.Linear))


def test_help_lists_every_study_with_its_question(capsys):
    with pytest.raises(SystemExit) as stop:
        experiments.parse_args(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    for name, page in experiments.STUDIES.items():
        assert f"  {name} " in out and page.QUESTION in out


def test_an_unknown_study_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        experiments.main(["fig1"])
    assert stop.value.code == 2 and "invalid choice: 'fig1'" in capsys.readouterr().err


def test_missing_mnist_stops_before_any_study(tmp_path, monkeypatch):
    # in this process a SolverError; the command line's one line and exit 1 for it are
    # test_plumbing.py's (the same plumbing.one_line_failures)
    def no_mnist(data_dir, device):
        raise experiments.plumbing.SolverError(f"MNIST is not in {data_dir}/MNIST/raw")
    monkeypatch.setattr(solver, "load_mnist", no_mnist)
    with pytest.raises(experiments.plumbing.SolverError, match="MNIST is not in"):
        experiments.run_studies(experiments.parse_args(
            ["lr", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- shared pieces

class Constant(nn.Module):
    """A 'network' that answers the same class for every image."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer

    def forward(self, x):
        return nn.functional.one_hot(torch.full((len(x),), self.answer), 10).float()


class FirstPixel(nn.Module):
    """A 'network' that answers the class written in each image's first pixel."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()


def test_outcome_is_one_rule_for_every_study():
    images = torch.randn(30, 1, 28, 28)
    ones = torch.ones(30, dtype=torch.int64)
    # one class predicted: failed whatever its accuracy (here 100%)
    assert outcome(Constant(1), images, ones, train_loss=0.3) == ("failed", 1.0)
    assert outcome(Constant(1), images, ones, float("nan"))[0] == "diverged"
    assert outcome(Constant(1), images, ones, float("inf")) == ("diverged", None)
    model = FirstPixel()
    labels = torch.arange(30) % 10                   # ten classes, each answered right
    images[:, 0, 0, 0] = labels.float()
    assert outcome(model, images, labels, 0.1) == ("ok", 1.0)
    wrong = (labels + 1) % 10                        # wrong on every image: accuracy 0 < 20%
    assert outcome(model, images, wrong, 0.1) == ("failed", 0.0)
    assert model.training   # put back into training mode


def quick_study(data, seed=0, seeds=1):
    args = argparse.Namespace(quick=True, jobs=1, seed=seed, seeds=seeds, out="unused", figures="unused")
    return Study(args, data)


def test_a_diverging_arm_is_labelled_and_crashes_nothing(tiny_mnist):
    study = quick_study(solver.load_mnist(tiny_mnist, torch.device("cpu")))
    model = study.model(lambda: mlp.build_model("none"), seed=0)
    history, label, acc = study.train(model, study.config(learning_rate=1e30), seed=0)
    assert (label, acc) == ("diverged", None)   # a label, not an exception
    # and it is drawn counted in the failure strip under the panel, not as a point of a line
    fig, (ax, strip) = plt.subplots(2, 1, sharex=True)
    outcomes = [["ok", "ok"], [label, "ok"]]
    draw_over_seeds(ax, [1, 2], [[0.9, 0.8], [acc, 0.7]], outcomes, "tab:blue", "arm")
    assert list(ax.lines[0].get_ydata()) == [pytest.approx(0.85), 0.7]
    assert not ax.collections[1:]   # the band alone: no marker in the panel
    assert draw_failures(strip, [("arm", "tab:blue", [1, 2], outcomes)]) == 1
    assert [t.get_text() for t in strip.get_yticklabels()] == ["arm, diverged"]
    assert [(t.get_position(), t.get_text()) for t in strip.texts] == [((2, 0), "1")]
    plt.close(fig)


def test_failure_strip_counts_each_kind_at_its_own_x():
    outcomes = [["ok", "failed", "diverged"], ["failed", "failed", "ok"], ["ok"] * 3]
    rows = failure_rows([("no BN", "tab:orange", [0.1, 1.0, 10.0], outcomes),
                         ("BN", "tab:blue", [0.1, 1.0, 10.0], [["ok"] * 3] * 3)])
    assert rows == [("no BN, failed", "tab:orange", "v", {0.1: 1, 1.0: 2}),
                    ("no BN, diverged", "tab:orange", "x", {0.1: 1})]


def test_a_failed_seed_is_left_out_of_the_mean_and_counted_beside_it():
    outcomes = ["ok", "ok", "failed", "diverged", "ok"]
    assert (seeds_cell([0.9, 0.8, 0.1, None, 0.7], outcomes)
            == "80.00% (70.00%-90.00%), 3 of 5 ok, 1 diverged, 1 failed")
    assert seeds_cell([0.9, 0.8], ["ok", "ok"]) == "85.00% (80.00%-90.00%)"
    assert seeds_cell([0.1, None], ["failed", "diverged"]) == "1 diverged, 1 failed"
    # in a figure: the mean line over the ok seeds; with floor=None the others as markers at
    # their own values (a measure of the run), never averaged in
    fig, ax = plt.subplots()
    draw_over_seeds(ax, [2, 4], [[1.0, 5.0, 3.0], [2.0, 6.0, None]],
                    [["ok", "failed", "ok"], ["ok", "failed", "diverged"]], "tab:blue", "arm",
                    failures="values")
    assert list(ax.lines[0].get_ydata()) == [2.0, 2.0]
    failed, = [c for c in ax.collections if c.get_label() == "arm: a failed run"]
    assert [tuple(p) for p in failed.get_offsets()] == [(2.0, 5.0), (4.0, 6.0)]
    assert not any(c.get_label() == "arm: a diverged run" for c in ax.collections)  # no value
    plt.close(fig)


def test_a_sweep_table_compares_with_and_without_bn_by_the_rule():
    ok = ["ok"] * 5
    point = lambda accs, outcomes=ok: {"lr": 0.1, "test_acc": accs, "outcome": outcomes}
    results = {"no_bn": [point([0.90, 0.91, 0.92, 0.93, 0.94]),
                         point([0.5, None, None, 0.4, 0.3],
                               ["ok", "diverged", "diverged", "failed", "ok"])],
               "bn": [point([0.95, 0.96, 0.97, 0.98, 0.99]),
                      point([0.95, 0.90, 0.97, 0.98, 0.99])]}
    lines = sweep_table(results, "lr").splitlines()
    assert lines[0] == "| lr | without BN | with BN | with BN - without BN |"
    assert lines[2] == ("| 0.1 | 92.00% (90.00%-94.00%) | 97.00% (95.00%-99.00%) | "
                        "effect: ranges apart, +5.00 points |")
    assert lines[3] == ("| 0.1 | 40.00% (30.00%-50.00%), 2 of 5 ok, 2 diverged, 1 failed | "
                        "95.80% (90.00%-99.00%) | not compared: 2 of 5 ok |")


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
    assert acc != outcome(model, test_x, test_y, 0.1)[1]               # not the running ones
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


def test_batch_survives_arms_that_diverge_at_once(tiny_mnist, tmp_path, monkeypatch):
    from studies import batch
    monkeypatch.setitem(batch.RATES, "constant", lambda size: 1e30)
    args = argparse.Namespace(quick=True, jobs=1, seed=0, seeds=1, out=str(tmp_path),
                              figures=str(tmp_path))
    run_study(batch, Study(args, solver.load_mnist(tiny_mnist, torch.device("cpu"))))
    constant = json.loads((tmp_path / "batch.json").read_text())["arms"]["constant"]
    assert all(seeds == ["diverged"]
               for seeds in constant["bn_outcome"] + constant["no_bn_outcome"])
    assert constant["bn_eval"][0] == [None] and (tmp_path / "batch_size.png").exists()
    # diverged in the first window: no window completed, so nothing of the mechanism recorded
    assert all(seeds == [None] for seeds in constant["x_hat_near_one"]
               + constant["first_grad_norm_bn"] + constant["bn_population"])


def test_redraw_draws_the_figures_again_from_the_json(quick_run, tmp_path, capsys):
    results, figures = quick_run
    out = figures.parent / "json"
    # every figure was drawn from its JSON already (quick_run); here the command that redraws
    # them, on a study of one figure and one of two
    experiments.main(["diagnostics", "--redraw", "--out", str(out), "--figures", str(tmp_path)])
    experiments.main(["lr", "--redraw", "--out", str(out), "--figures", str(tmp_path)])
    drawn = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(drawn) == {"layer_health.png", "update_ratio.png", "lr_robustness.png"}
    assert drawn["lr_robustness.png"] == (figures / "lr_robustness.png").read_bytes()
    with pytest.raises(SystemExit) as stop:   # no JSON yet: one line saying what to run first
        experiments.main(["lr", "--redraw", "--out", str(tmp_path / "none")])
    assert "run `python experiments.py lr" in str(stop.value.code)
    assert str(stop.value.code).endswith("first")


def test_placement_and_detach_leave_a_failed_seed_out_and_compare_by_the_rule():
    from studies import detach, placement
    ok, one_failed = ["ok"] * 5, ["ok", "failed", "ok", "ok", "ok"]
    arm = lambda accs, outcomes: {"test_acc": accs, "outcome": outcomes}
    models = {"mlp": {"before": arm([0.97, 0.96, 0.97, 0.98, 0.97], ok),
                      "after": arm([0.98, 0.11, 0.98, 0.99, 0.98], one_failed)}}
    text = placement.table({"models": models})
    # the failed seed is in no mean; four pairs are too few for an effect
    assert "| mlp | 97.00% (96.00%-98.00%) | 98.25% (98.00%-99.00%), 4 of 5 ok, 1 failed | " \
           "not compared: 4 of 5 ok |" in text
    models["mlp"]["after"]["outcome"] = ok
    models["mlp"]["after"]["test_acc"][1] = 0.9601
    assert "effect: +0.01 to +1.00 points on all 5 seeds" in placement.table({"models": models})
    ratios = {"bias_grad": [[1.0, 1.0], [50.0, 50.0]], "weight_grad": [[10.0, 10.0], [1.0, 1.0]],
              "outcome": ["ok", "diverged"]}
    assert detach.median_ratio(ratios) == pytest.approx(0.1)   # the diverged seed's 50 left out
    ratios["outcome"] = ["failed", "diverged"]
    assert detach.median_ratio(ratios) is None
