"""The three studies of "why BN helps, the 2018 answer" (studies/noisy.py, ics.py,
smoothness.py): the noise's draws, the smoothness measure against a closed form, the covariate
shift against a hand-made update, measuring that changes nothing and sees the step's own
forward, and each study in --quick."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import experiments
import mlp
import solver
from studies import ics, noisy, smoothness
from studies.common import Study
from studies.noisy import BatchNoise
from studies.smoothness import along_gradient
from studies.why_bn import schedule, training_data

# ----------------------------------------------------------------------------- BatchNoise


def test_batch_noise_draws_per_unit_shift_and_scale_in_the_papers_ranges():
    torch.manual_seed(0)
    units, n = 64, 20_000
    a = torch.cat([torch.ones(n, units), torch.zeros(n, units)])   # per unit: s + m, then m
    out = BatchNoise().train()(a)
    ones, zeros = out[:n], out[n:]
    mu = zeros.mean(dim=0)                    # m ~ U(mu_j - 0.1, mu_j + 0.1)
    sigma = ones.mean(dim=0) - mu             # s ~ N(sigma_j, 0.1)
    assert (mu.abs() < 0.5).all() and mu.min() < -0.3 and mu.max() > 0.3   # spread over (-0.5, 0.5)
    assert 0.2 < mu.std() < 0.38              # U(-0.5, 0.5): 0.289
    assert ((sigma > 1 - 0.01) & (sigma < 1.25 + 0.01)).all()
    assert sigma.min() < 1.05 and sigma.max() > 1.2
    assert ((ones.mean(dim=0) - (sigma + mu)).abs() < 1e-6).all()
    # a = 0: the output is m, inside mu_j +- 0.1, filling that window
    window = zeros.amax(dim=0) - zeros.amin(dim=0)
    assert ((window <= 0.2 + 1e-5) & (window > 0.199)).all()
    assert ((zeros.amax(dim=0) + zeros.amin(dim=0)) / 2 - mu).abs().max() < 0.003   # centred
    assert zeros.std(dim=0).sub(0.2 / 12 ** 0.5).abs().max() < 0.005    # U over 0.2: 0.0577
    # a = 1: s + m, standard deviation sqrt(0.1^2 + 0.2^2 / 12) = 0.1155
    assert ones.std(dim=0).sub(0.1155).abs().max() < 0.005


def test_batch_noise_is_fresh_each_call_seeded_and_off_in_eval_mode():
    layer = BatchNoise()
    a = torch.randn(50, 8)
    torch.manual_seed(1)
    first, second = layer(a), layer(a)
    assert not torch.allclose(first.mean(0), second.mean(0), atol=0.05)   # new mu_j, sigma_j
    torch.manual_seed(1)
    assert torch.equal(layer(a), first)       # seeded: the same draws again
    assert layer.eval()(a) is a               # evaluation: identity
    generator = torch.Generator().manual_seed(3)
    again = torch.Generator().manual_seed(3)
    assert torch.equal(BatchNoise(generator=generator)(a),
                       BatchNoise(generator=again)(a))


def test_batch_noise_counts_height_and_width_as_batch_dimensions():
    torch.manual_seed(2)
    out = BatchNoise()(torch.zeros(8, 16, 10, 10))
    assert out.shape == (8, 16, 10, 10)
    per_channel = out.transpose(0, 1).reshape(16, -1)   # every value of one channel
    window = per_channel.amax(dim=1) - per_channel.amin(dim=1)
    assert (window <= 0.2 + 1e-5).all() and (window > 0.19).all()   # one mu_j per channel
    assert per_channel.mean(dim=1).std() > 0.1          # channels draw their own mu_j


def test_noisy_arms_are_built_as_described():
    for network in ("mlp", "cnn"):
        kinds = {arm: [type(m).__name__ for m in noisy.build_arm(network, arm)]
                 for arm in noisy.ARMS}
        bn_layers = kinds["bn"].count("BatchNorm1d") + kinds["bn"].count("BatchNorm2d")
        assert bn_layers == 2 and "BatchNoise" not in kinds["bn"]
        assert kinds["bn_noise"].count("BatchNoise") == 2
        for i, kind in enumerate(kinds["bn_noise"]):   # noise right after each BN
            if kind.startswith("BatchNorm"):
                assert kinds["bn_noise"][i + 1] == "BatchNoise"
        assert kinds["noise"] == ["BatchNoise" if k.startswith("BatchNorm") else k
                                  for k in kinds["bn"]]
        assert not any(k.startswith("BatchNorm") for k in kinds["none"] + kinds["noise"])
    torch.manual_seed(0)
    with_noise = noisy.build_arm("mlp", "noise")
    torch.manual_seed(0)
    plain = mlp.build_model("none")
    # the same weights under one seed, and the MLP's rule: no bias anywhere
    assert all(torch.equal(a, b) for a, b in zip(with_noise.parameters(), plain.parameters()))

# ----------------------------------------------------------------------------- along_gradient


@pytest.mark.parametrize("bias", [False, True])
def test_along_gradient_matches_the_closed_form_of_a_quadratic(bias):
    torch.manual_seed(0)
    n, d = 40, 5
    x, y = torch.randn(n, d, dtype=torch.float64), torch.randn(n, 1, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=bias).double()
    w = torch.cat([model.weight.detach().flatten()]
                  + ([model.bias.detach()] if bias else []))
    design = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1) if bias else x
    g = 2 * design.T @ (design @ w - y.flatten()) / n          # L = mean((Xw - y)^2)
    hessian = 2 * design.T @ design / n
    loss0 = ((design @ w - y.flatten()) ** 2).mean()
    etas = [0.0, 0.05, 0.1, 0.3, 0.8]
    result = along_gradient(model, F.mse_loss, x, y, etas)
    for eta, loss, distance in zip(etas, result["loss"], result["grad_distance"]):
        expected = loss0 - eta * g @ g + 0.5 * eta ** 2 * g @ hessian @ g
        assert loss == pytest.approx(expected.item(), rel=1e-10)
        assert distance == pytest.approx(eta * (hessian @ g).norm().item(), rel=1e-9, abs=1e-12)
    assert result["beta"] == pytest.approx(((hessian @ g).norm() / g.norm()).item(), rel=1e-9)
    assert len(result["loss"]) == len(etas) and result["grad_distance"][0] == 0.0


def state_of(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            [m.training for m in model.modules()])


def test_along_gradient_leaves_a_bn_model_exactly_as_it_was():
    torch.manual_seed(0)
    model = mlp.build_model("bn")
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    F.cross_entropy(model(x), y).backward()   # .grad set, running estimates moved
    model.eval()
    model[2].train()                          # a mix of modes, to be kept as it is
    before = state_of(model)
    result = along_gradient(model, F.cross_entropy, x, y, [0.05, 0.1, 0.4])
    after = state_of(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])   # params, buffers
    assert all(torch.equal(a, b) for a, b in zip(before[1], after[1]))     # .grad
    assert before[2] == after[2]
    assert result["beta"] > 0 and all(d > 0 for d in result["grad_distance"])

# ----------------------------------------------------------------------------- ics


def test_covariate_shift_uses_the_optimizers_real_update():
    """A 2-layer net and SGD with momentum and weight decay after two steps: G' by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    lr, momentum, decay = 0.1, 0.9, 1e-2
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=decay)
    batches = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(3)]
    for i, (x, y) in enumerate(batches):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if i < len(batches) - 1:   # the last batch's gradient stays, its step not yet taken
            optimizer.step()
    x, y = batches[-1]
    w1, b1, w2, b2 = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    # torch's SGD: buf = momentum * buf + (grad + decay * p); p -= lr * buf
    stepped = [p - lr * (momentum * buf + g + decay * p)
               for p, g, buf in zip((w1, b1), grads[:2], buffers[:2])]
    w2_leaf = w2.clone().requires_grad_()
    hidden = F.relu(x @ stepped[0].T + stepped[1])
    g2_shifted, = torch.autograd.grad(F.cross_entropy(hidden @ w2_leaf.T + b2, y), w2_leaf)
    g2 = grads[2]

    rows = ics.covariate_shift(model, optimizer, x, y)
    assert rows[0]["distance"] == 0.0 and rows[0]["cos"] == pytest.approx(1.0, abs=1e-6)
    assert rows[1]["distance"] == pytest.approx((g2 - g2_shifted).norm().item(), rel=1e-4)
    cos = (g2 * g2_shifted).sum() / (g2.norm() * g2_shifted.norm())
    assert rows[1]["cos"] == pytest.approx(cos.item(), abs=1e-6)
    assert rows[1]["distance"] > 1e-4
    # model and optimizer untouched
    assert all(torch.equal(a, b) for a, b in zip((w1, b1, w2, b2), model.parameters()))
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
    assert all(torch.equal(a, optimizer.state[p]["momentum_buffer"])
               for a, p in zip(buffers, model.parameters()))


@pytest.fixture(scope="module")
def tiny_study(tiny_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("why_bn")
    args = argparse.Namespace(quick=True, jobs=1, seed=0, seeds=1, out=str(out / "json"),
                              figures=str(out / "figures"))
    return Study(args, solver.load_mnist(tiny_mnist, torch.device("cpu")))


@pytest.mark.parametrize("network", ["mlp", "cnn"])
def test_measuring_ics_changes_nothing_in_training(tiny_study, network):
    config = tiny_study.config(**schedule(tiny_study))
    measured = ics.train_measured(tiny_study, network, True, 0, config)
    rng = torch.get_rng_state()
    plain = ics.train_measured(tiny_study, network, True, 0, config, measure=False)
    for part in ("train", "test"):
        for key in ("loss", "acc"):
            assert measured[0][part][key] == plain[0][part][key]   # bit for bit
    assert measured[1:3] == plain[1:3]
    record = measured[3]
    every = config["disp_freq"]
    steps = len(training_data(tiny_study)[0]) // config["batch_size"] * config["max_epoch"]
    assert record["step"] == [1] + list(range(every, steps + 1, every))
    # the first layer has nothing before it: G' is G, which checks that the batch is the step's
    assert all(d == 0.0 for d in record["distance"][0])
    assert all(d > 0 for d in record["distance"][1])
    assert torch.equal(rng, torch.get_rng_state())   # measuring drew no random number

# ----------------------------------------------------------------------------- noisy


def test_noisy_percentiles_are_those_of_the_steps_own_forward(tiny_study):
    """The first ReLU's input, replayed in on_step, is the one the training forward computed,
    noise draws included: as a forward hook kept during training (solver.InputProbe) sees it
    at each window's end; and measuring changes nothing in the run."""
    config = tiny_study.config(**schedule(tiny_study))
    outcome, acc, curve = noisy.train_arm(tiny_study, "mlp", "bn_noise", 0, config)
    model = tiny_study.model(lambda: noisy.build_arm("mlp", "bn_noise"), 0)
    probe = solver.InputProbe(model)
    record = lambda iteration, model: probe.record_window(iteration)
    history, *plain = tiny_study.train(model, config, 0, on_window=record,
                                       data=training_data(tiny_study))
    assert (outcome, acc) == tuple(plain)
    assert curve["step"] == probe.record["iter"] == history["train"]["iter"]
    for key in ("p15", "p50", "p85"):
        assert curve[key] == probe.record[key]

# ----------------------------------------------------------------------------- the studies


@pytest.fixture(scope="module")
def quick(quick_run):
    """The three studies as the session's `experiments.py all --quick` on the tiny IDX data
    wrote them (conftest.py's quick_run): (their results by name, the figures folder)."""
    results, figures = quick_run
    return {name: results[name] for name in ("noisy", "ics", "smoothness")}, figures


def check_provenance(results):
    provenance = results["provenance"]
    assert set(provenance) >= {"seeds", "torch", "threads", "cpu", "command"}
    assert provenance["seeds"] == [0] and provenance["threads"] >= 1
    return len(provenance["seeds"])


def check_arm(arm, seeds):
    assert len(arm["test_acc"]) == len(arm["outcome"]) == seeds
    assert all(o in ("ok", "failed", "diverged") for o in arm["outcome"])
    assert all(a is None or 0 <= a <= 1 for a in arm["test_acc"])


def test_studies_are_registered_with_their_figures(quick):
    _, figures = quick
    assert {"noisy", "ics", "smoothness"} <= set(experiments.STUDIES)
    for page in (noisy, ics, smoothness):
        assert experiments.STUDIES[page.NAME] is page
        for figure in page.FIGURES:
            assert (figures / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_noisy_quick(quick):
    results = quick[0]["noisy"]
    seeds = check_provenance(results)
    for network in ("mlp", "cnn"):
        assert set(results[network]) == {"none", "bn", "bn_noise", "noise"}
        for arm in results[network].values():
            check_arm(arm, seeds)
            for seed in range(seeds):
                steps, curve = arm["step"][seed], arm["test_acc_curve"][seed]
                assert len(steps) == len(curve) == len(arm["p50"][seed]) >= 4
                assert all(0 <= a <= 1 for a in curve)
                assert all(a <= b <= c for a, b, c in zip(arm["p15"][seed], arm["p50"][seed],
                                                          arm["p85"][seed]))
    # the noise moves the distribution of a unit from step to step: BN alone does not as much
    assert results["mlp"]["bn_noise"]["median_jump"][0] > results["mlp"]["bn"]["median_jump"][0]


def test_ics_quick(quick):
    results = quick[0]["ics"]
    seeds = check_provenance(results)
    for network in ("mlp", "cnn"):
        layers = results[network]["layers"]
        assert len(layers) == 3
        for key in ("no_bn", "bn"):
            arm = results[network][key]
            check_arm(arm, seeds)
            for i in range(len(layers)):
                for seed in range(seeds):
                    n = len(arm["step"][seed])
                    distance, cos = arm["distance"][i][seed], arm["cos"][i][seed]
                    assert len(distance) == len(cos) == n >= 4
                    assert all(d is not None and d >= 0 for d in distance)
                    assert all(c is not None and -1 - 1e-6 <= c <= 1 + 1e-6 for c in cos)
            assert all(d == 0 for d in arm["distance"][0][0])   # the first layer: G' = G


def test_smoothness_quick(quick):
    results = quick[0]["smoothness"]
    seeds = check_provenance(results)
    assert len(results["step_factors"]) >= 6
    assert min(results["step_factors"]) == 0.5 and max(results["step_factors"]) == 4
    settings = [(s["network"], s["learning_rate"]) for s in results["settings"]]
    assert settings == [("mlp", 0.1), ("cnn", 0.1), ("mlp", 0.2)]
    for setting in results["settings"]:
        for key in ("no_bn", "bn"):
            arm = setting[key]
            check_arm(arm, seeds)
            for seed in range(seeds):
                n = len(arm["step"][seed])
                assert n >= 4
                for measure in ("loss_range", "grad_range", "beta"):
                    values = arm[measure][seed]
                    assert len(values) == n
                    if arm["outcome"][seed] != "diverged":
                        assert all(v is not None and v >= 0 for v in values)

# ----------------------------------------------------------------------------- failed runs


def fake_arm(curves, outcomes, steps=(1, 3, 6)):
    """An arm of noisy.json by hand: per seed a test-accuracy curve and the percentiles."""
    n = len(curves)
    return {"outcome": outcomes, "test_acc": [c[-1] for c in curves], "step": [list(steps)] * n,
            "test_acc_curve": curves, "p15": [[-1.0] * len(steps)] * n,
            "p50": [[0.0] * len(steps)] * n, "p85": [[1.0] * len(steps)] * n,
            "median_jump": [0.1 * (i + 1) for i in range(n)]}


def test_draw_band_never_averages_a_failed_run():
    import matplotlib.pyplot as plt
    from studies.why_bn import draw_band
    fig, ax = plt.subplots()
    steps = [[1, 2, 3]] * 3
    ok = draw_band(ax, steps, [[0.5, 0.7, 0.9], [0.1, 0.1, 0.1], [0.3, 0.5, None]], "tab:blue",
                   "arm", outcomes=["ok", "failed", "ok"])
    assert ok == 2
    mean = next(line for line in ax.lines if line.get_label() == "arm: mean of 2 of 3 ok")
    assert list(mean.get_ydata()) == pytest.approx([0.4, 0.6, 0.9])   # the ok seeds alone
    own = [line for line in ax.lines if list(line.get_ydata()) == [0.1, 0.1, 0.1]]
    assert len(own) == 1 and own[0].get_linestyle() == ":"             # the failed run alone
    marker = next(line for line in ax.lines if line.get_label() == "arm: a failed run")
    assert (marker.get_marker(), list(marker.get_xdata()), list(marker.get_ydata())) == (
        "v", [3], [0.1])
    plt.close(fig)


def test_noisy_draws_and_tables_failed_runs_apart_from_the_mean():
    import matplotlib.pyplot as plt
    results = {"provenance": {"seeds": [0, 1, 2]}}
    for network in ("mlp", "cnn"):
        results[network] = {arm: fake_arm([[0.5, 0.8, 0.9], [0.4, 0.7, 0.8], [0.3, 0.6, 0.7]],
                                          ["ok"] * 3) for arm in noisy.ARMS}
    # the CNN's noise alone: the second seed learnt nothing
    results["cnn"]["noise"] = fake_arm([[0.5, 0.8, 0.9], [0.1, 0.1, 0.11], [0.3, 0.6, 0.7]],
                                       ["ok", "failed", "ok"])
    fig = noisy.draw(results)[0]
    cnn_acc = fig.axes[1]   # the accuracy panels first, MLP then CNN, side by side
    mean = next(line for line in cnn_acc.lines
                if line.get_label() == "noise alone, in BN's place: mean of 2 of 3 ok")
    assert list(mean.get_ydata()) == pytest.approx([0.4, 0.7, 0.8])
    plt.close(fig)
    text = noisy.table(results)
    assert "| cnn | noise alone, in BN's place (2 of 3 ok, 1 failed) | 80.00% (70.00%-90.00%) |" \
        in text
    assert "| cnn | noise alone - no normalization | not compared: 2 of 3 ok |" in text


def test_ics_and_smoothness_tables_compare_with_and_without_bn(quick):
    for page in (ics, smoothness):
        text = page.table(quick[0][page.NAME])
        assert "with BN - without BN" in text and "not compared: 1 of 1 ok" in text
