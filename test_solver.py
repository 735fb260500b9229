"""solver.py and the three model scripts, the lesson's side: data, schedules, shapes, parameter
counts, a short run's outputs, learning on tiny data, and resume ending where an uninterrupted
run ends. Tiny synthetic MNIST files keep each training run to a second; nothing downloads.
The command line's failures are in test_plumbing.py."""
import json
import math

import pytest
import torch
import torchvision

import cnn
import mlp
import plumbing
import registry
import resnet
import solver

HISTORY_KEYS = {"model", "norm", "params", "config", "device", "threads", "cpu", "train",
                "test", "epoch_time_s", "train_time_s", "best_test_acc"}   # what other tools read


# ----------------------------------------------------------------------------- data

def test_load_mnist_reads_tiny_idx_files(tiny_mnist):
    train_x, train_y, test_x, test_y = solver.load_mnist(tiny_mnist, torch.device("cpu"))
    assert train_x.shape == (300, 1, 28, 28) and test_x.shape == (100, 1, 28, 28)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    assert train_y[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    # a 255 pixel becomes (1 - mean) / std; a 0 pixel -mean / std
    assert math.isclose(train_x.max().item(), (1 - solver.MNIST_MEAN) / solver.MNIST_STD, rel_tol=1e-6)
    raw = torchvision.datasets.MNIST(tiny_mnist, train=True).data
    expected = (raw.float() / 255 - solver.MNIST_MEAN) / solver.MNIST_STD
    torch.testing.assert_close(train_x[:, 0], expected)


def test_random_shift_moves_each_image_and_fills_with_background():
    images = torch.zeros(64, 1, 28, 28)
    images[:, 0, 14, 14] = 5.0
    shifted = solver.random_shift(images, 2, torch.Generator().manual_seed(0))
    positions = (shifted[:, 0] == 5.0).nonzero()[:, 1:] - 14
    assert len(positions) == 64 and positions.abs().max() <= 2
    assert len({tuple(p) for p in positions.tolist()}) > 10   # each image its own shift
    background = -solver.MNIST_MEAN / solver.MNIST_STD
    assert (shifted[:, 0, 0, 0] == background).any()          # the uncovered border


def test_random_shift_is_a_whole_image_translation():
    # Each output must be its input moved as a whole by one (dy, dx), with background filled in.
    images = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    shifted = solver.random_shift(images, 1, torch.Generator().manual_seed(0))
    background = -solver.MNIST_MEAN / solver.MNIST_STD

    def translated(image, dy, dx):   # the image moved down by dy and right by dx
        out = torch.full_like(image, background)
        out[max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)] = \
            image[max(-dy, 0):28 + min(-dy, 0), max(-dx, 0):28 + min(-dx, 0)]
        return out

    moves = set()
    for image, result in zip(images[:, 0], shifted[:, 0]):
        matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if torch.equal(result, translated(image, dy, dx))]
        assert len(matches) == 1
        moves.add(matches[0])
    assert len(moves) >= 5   # 32 images spread over the 9 possible moves


def test_learning_rate_schedules():
    config = dict(learning_rate=0.1, max_epoch=10, lr_schedule="constant", warmup_epochs=0)
    assert [solver.learning_rate(config, e) for e in (0, 9)] == [0.1, 0.1]
    config["lr_schedule"] = "cosine"
    assert solver.learning_rate(config, 0) == 0.1
    assert math.isclose(solver.learning_rate(config, 5), 0.05)
    assert solver.learning_rate(config, 9) < 0.003
    config["warmup_epochs"] = 3
    assert [round(solver.learning_rate(config, e), 6) for e in range(4)] == [0.025, 0.05, 0.075, 0.1]


# ----------------------------------------------------------------------------- models

@pytest.mark.parametrize("script,norm,expected", [
    (mlp, "none", 109_184), (mlp, "bn", 109_568),     # the report's counts exactly
    (cnn, "none", 2_158), (cnn, "bn", 2_174),         # the report: 2,143 and 2,159
])
def test_parameter_counts(script, norm, expected):
    assert sum(p.numel() for p in script.build_model(norm).parameters()) == expected


def test_resnet_has_eight_weighted_layers_and_bn_after_every_conv():
    from batchnorm import BatchNorm2d
    model = resnet.build_model()   # BN is the ResNet's default
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(linears) == 8
    all_convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(isinstance(m, BatchNorm2d) for m in model.modules()) == len(all_convs)
    assert not any(isinstance(m, BatchNorm2d) for m in resnet.build_model("none").modules())


@pytest.mark.parametrize("script", [mlp, cnn, resnet])
def test_models_map_a_batch_of_digits_to_ten_logits(script):
    for norm in ("none", "bn"):
        assert script.build_model(norm)(torch.randn(3, 1, 28, 28)).shape == (3, 10)


# ----------------------------------------------------------------------------- the loop

def small_training(tiny_mnist, **changes):
    """What one epoch of solver.train needs, on the tiny data: model, optimizer, data, config."""
    data = solver.load_mnist(tiny_mnist, torch.device("cpu"))
    config = dict(mlp.config, max_epoch=1, batch_size=50, lr_schedule="constant", norm="bn",
                  seed=0, **changes)
    torch.manual_seed(0)
    model = mlp.build_model("bn")
    return model, solver.make_optimizer(model, config), data, config


def test_on_step_sees_the_steps_batch_gradient_and_weights(tiny_mnist):
    """At a chosen step, on_step's .grad is the gradient of the loss on its (images, labels)
    at its weights, the images are the shifted ones trained on, and the next step's weights
    differ from them by exactly SGD's update."""
    model, optimizer, data, config = small_training(tiny_mnist, augment_shift=1, momentum=0.0,
                                                    weight_decay=0.0, learning_rate=0.1)
    seen = {}

    def on_step(iteration, model, optimizer, images, labels, loss):
        if iteration in (3, 4):
            seen[iteration] = ([p.detach().clone() for p in model.parameters()],
                               [p.grad.clone() for p in model.parameters()], images, labels, loss)
    history = solver.new_history("mlp", "bn", 0, config, "cpu")
    solver.train(model, optimizer, data, config, torch.Generator().manual_seed(0), history,
                 on_step=on_step)

    weights, grads, images, labels, loss = seen[3]
    assert not any(torch.equal(images, data[0][k:k + 50]) for k in range(0, 300, 50))  # shifted
    probe = mlp.build_model("bn")
    probe.load_state_dict(dict(zip([name for name, _ in probe.named_parameters()], weights)),
                          strict=False)
    probe.train()
    probe_loss = torch.nn.functional.cross_entropy(probe(images), labels)
    expected = torch.autograd.grad(probe_loss, list(probe.parameters()))
    assert probe_loss.item() == loss.item()
    for grad, want in zip(grads, expected):
        torch.testing.assert_close(grad, want, rtol=0, atol=0)
    next_weights = seen[4][0]
    for w, g, w_next in zip(weights, grads, next_weights):   # plain SGD: w - lr * g
        torch.testing.assert_close(w_next, w.add(g, alpha=-0.1), rtol=0, atol=0)


def test_on_step_changes_nothing_in_the_run(tiny_mnist):
    histories = []
    for on_step in (None, lambda *step: None):
        model, optimizer, data, config = small_training(tiny_mnist, augment_shift=1)
        history = solver.new_history("mlp", "bn", 0, config, "cpu")
        solver.train(model, optimizer, data, config, torch.Generator().manual_seed(0), history,
                     on_step=on_step)
        histories.append((history["train"], history["test"]))
    assert histories[0] == histories[1]


def test_evaluate_puts_every_module_back_in_its_mode(tiny_mnist):
    model, _, (_, _, test_x, test_y), _ = small_training(tiny_mnist)
    model.train()
    model[2].eval()   # one module in its own mode: it stays so
    solver.evaluate(model, test_x, test_y)
    assert model.training and not model[2].training
    assert all(m.training for i, m in enumerate(model) if i != 2)
    model.eval()
    solver.evaluate(model, test_x, test_y)
    assert not any(m.training for m in model.modules())


# ----------------------------------------------------------------------------- a run

def test_short_run_writes_history_and_checkpoint(tiny_mnist, tmp_path, train):
    out = tmp_path / "run"
    train("cnn", tiny_mnist, out, "--bn", "--epochs", "2", "--batch-size", "50")
    history = json.loads((out / "history.json").read_text())
    assert set(history) == HISTORY_KEYS                               # exactly the keys
    assert history["model"] == "cnn" and history["params"] == 2_174
    assert history["norm"] == "bn" and history["threads"] == torch.get_num_threads()
    assert history["cpu"] == plumbing.cpu_name()
    assert history["config"]["batch_size"] == 50 and history["device"] == "cpu"
    assert history["train"]["iter"] == list(range(1, 13))             # 6 steps per epoch, disp_freq 1
    assert len(history["train"]["loss"]) == len(history["train"]["acc"]) == 12
    assert history["test"]["epoch"] == [1, 2]
    assert all(0 <= a <= 1 for a in history["test"]["acc"] + history["train"]["acc"])
    assert len(history["epoch_time_s"]) == 2
    assert math.isclose(history["train_time_s"], sum(history["epoch_time_s"]))
    assert history["best_test_acc"] == max(history["test"]["acc"])
    activation = json.loads((out / "activation.json").read_text())   # the BN paper's Fig. 1 view
    assert activation["unit"] == solver.PROBE_UNIT and activation["iter"] == history["train"]["iter"]
    assert all(a <= b <= c for a, b, c in zip(activation["p15"], activation["p50"], activation["p85"]))
    assert len(set(activation["p50"])) > 1                            # it moves as the weights change

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)   # no code can run from it
    assert checkpoint["epoch"] == 2 and checkpoint["model"] == "cnn"
    assert not list(out.glob("*.tmp"))


def test_tiny_data_is_learnable(tiny_mnist, tmp_path, train):
    """A sanity check that the loop really trains: the squares are trivial to tell apart."""
    train("mlp", tiny_mnist, tmp_path, "--bn", "--epochs", "8", "--batch-size", "30")
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["test"]["acc"][-1] > 0.9


RESUME_FLAGS = ["--bn", "--batch-size", "50", "--plain", "--augment-shift", "1"]


@pytest.fixture(scope="module")
def whole_run(tiny_mnist, tmp_path_factory, train):
    """cnn.py --bn for 3 epochs without a stop: what every resumed run must end with."""
    out = tmp_path_factory.mktemp("whole")
    train("cnn", tiny_mnist, out, *RESUME_FLAGS, "--epochs", "3")
    return out


def read_json(path):
    return json.loads(path.read_text())


def test_same_seed_same_numbers_and_resume_ends_where_uninterrupted_run_ends(
        tiny_mnist, tmp_path, train, whole_run):
    train("cnn", tiny_mnist, tmp_path, *RESUME_FLAGS, "--epochs", "1")
    train("cnn", tiny_mnist, tmp_path, *RESUME_FLAGS, "--epochs", "3", "--resume")
    whole, split = read_json(whole_run / "history.json"), read_json(tmp_path / "history.json")
    assert split["test"] == whole["test"]          # loss and accuracy of every epoch, exactly
    assert split["train"] == whole["train"]
    assert read_json(tmp_path / "activation.json") == read_json(whole_run / "activation.json")


# ----------------------------------------------------------------------------- the recipe, --norm

def test_defaults_hold_the_reports_recipe_and_each_script_only_what_differs():
    assert solver.DEFAULTS == {
        "learning_rate": 0.1, "weight_decay": 1e-4, "momentum": 0.9, "batch_size": 100,
        "max_epoch": 100, "disp_freq": 50, "lr_schedule": "cosine", "warmup_epochs": 0,
        "augment_shift": 0, "norm": "none"}
    differs = lambda config: {k: v for k, v in config.items() if solver.DEFAULTS[k] != v}
    assert set(mlp.config) == set(cnn.config) == set(resnet.config) == set(solver.DEFAULTS)
    assert differs(mlp.config) == {}
    assert differs(cnn.config) == {"warmup_epochs": 3, "augment_shift": 1}
    assert differs(resnet.config) == {"max_epoch": 15, "augment_shift": 2, "norm": "bn"}


@pytest.mark.parametrize("name,flags,norm", [
    ("cnn", [], "none"), ("resnet", [], "bn"),              # each script's own default
    ("cnn", ["--bn"], "bn"), ("cnn", ["--norm", "bn"], "bn"), ("resnet", ["--no-bn"], "none"),
    ("cnn", ["--bn", "--no-bn"], "none"), ("cnn", ["--no-bn", "--bn"], "bn"),   # the last wins
    ("cnn", ["--norm", "none", "--bn"], "bn"), ("cnn", ["--bn", "--norm", "none"], "none"),
])
def test_norm_bn_and_no_bn_set_one_value_and_the_last_one_wins(name, flags, norm):
    args = solver.parse_args(name, registry.model_script(name).config, flags)
    assert args.norm == norm
    assert args.out == str(solver.run_folder(name, norm))   # runs/cnn, runs/cnn_bn, ...
    assert solver.effective_config(registry.model_script(name).config, args)["norm"] == norm


def test_an_unknown_norm_is_a_usage_error(exit_code_and_stderr):
    code, err = exit_code_and_stderr(lambda: solver.parse_args("mlp", mlp.config, ["--norm", "x"]))
    assert code == 2 and "--norm: must be one of none, bn" in err


def test_norm_bn_trains_exactly_as_bn(tiny_mnist, tmp_path, train):
    for flag in (["--bn"], ["--norm", "bn"]):
        train("mlp", tiny_mnist, tmp_path / flag[-1], *flag, "--epochs", "1", "--batch-size", "50")
    by_flag, by_norm = (read_json(tmp_path / name / "history.json") for name in ("--bn", "bn"))
    assert by_flag["norm"] == by_norm["norm"] == "bn"
    for key in ("train", "test", "params", "config"):
        assert by_flag[key] == by_norm[key]


def test_one_epoch_of_the_mlp_on_real_mnist(real_mnist, tmp_path, train):
    train("mlp", real_mnist, tmp_path, "--epochs", "1", "--disp-freq", "50")
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["test"]["acc"][-1] > 0.95


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_every_normalization_trains_in_every_script(name, tiny_mnist, tmp_path, train,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)   # the default --out, runs/<script>_<norm>, lands here
    script = registry.model_script(name)
    for norm in ("ln", "gn", "brn"):
        argv = ["--norm", norm, "--epochs", "1", "--batch-size", "50", "--data-dir",
                str(tiny_mnist), "--device", "cpu"]
        solver.train_run(name, script.build_model, script.config,
                         solver.parse_args(name, script.config, argv))
        history = read_json(tmp_path / "runs" / f"{name}_{norm}" / "history.json")
        assert history["norm"] == norm
        assert all(math.isfinite(loss) for loss in history["train"]["loss"])
        model = script.build_model(norm)
        kinds = {type(m).__name__ for m in model.modules()}
        expected = {"ln": "LayerNorm", "gn": "GroupNorm", "brn": "BatchRenorm"}[norm]
        assert any(kind.startswith(expected) for kind in kinds) and "BatchNorm1d" not in kinds
        assert history["params"] == sum(p.numel() for p in model.parameters())
        if norm == "gn":   # the network's own named group count, in every GroupNorm layer
            groups = {m.num_groups for m in model.modules() if type(m).__name__ == "GroupNorm"}
            assert groups == {script.GN_GROUPS}
