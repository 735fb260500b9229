"""plot.py on synthetic runs: every figure and the table, headless; converge speed checked exactly."""
import json

import pytest
import torch

import mlp
import plot
import solver


def synthetic_history(bn, crosses_90_at):
    """A run whose windowed train accuracy first reaches 0.90 at iteration `crosses_90_at`.

    Without history.json's `cpu`, as a run saved before it was recorded: plot.py reads those."""
    iters = list(range(50, 1001, 50))
    acc = [0.5 + 0.4 * min(1.0, it / crosses_90_at) - (0.001 if it < crosses_90_at else 0)
           for it in iters]
    acc = [min(a, 0.97) for a in acc]
    norm = "bn" if bn else "none"
    history = {
        "model": "mlp", "norm": norm, "params": 109_568 if bn else 109_184,
        "config": {"disp_freq": 50, "norm": norm}, "device": "cpu", "threads": 2,
        "train": {"iter": iters, "loss": [1 / it for it in iters], "acc": acc},
        "test": {"epoch": [1, 2], "loss": [0.2, 0.1], "acc": [0.95, 0.96]},
        "epoch_time_s": [40.0, 45.5], "train_time_s": 85.5, "best_test_acc": 0.96,
    }
    return history


SYNTHETIC_ACTIVATION = {"layer": "input of the first ReLU", "unit": 0,
                        "iter": list(range(50, 1001, 50)),
                        "p15": [-1.0] * 20, "p50": [0.0] * 20, "p85": [1.0] * 20}


@pytest.fixture
def two_runs(tmp_path):
    """mlp with BN and mlp without BN."""
    dirs = []
    for bn, crossing in ((True, 300), (False, 700)):
        run_dir = tmp_path / f"mlp{'_bn' if bn else ''}"
        run_dir.mkdir()
        history = synthetic_history(bn, crossing)
        (run_dir / "history.json").write_text(json.dumps(history))
        (run_dir / "activation.json").write_text(json.dumps(SYNTHETIC_ACTIVATION))
        torch.manual_seed(0)
        model = mlp.build_model("bn" if bn else "none")
        torch.save({"model_state": model.state_dict()}, run_dir / "checkpoint.pt")
        dirs.append(run_dir)
    return dirs


def test_converge_iteration_finds_the_first_crossing():
    history = synthetic_history(True, 300)
    assert plot.converge_iteration(history, 0.90) == 300
    assert plot.converge_iteration(history, 0.98) is None
    assert plot.converge_iteration(synthetic_history(False, 700), 0.90) == 700


def test_run_names_and_folders():
    assert [solver.run_label("cnn", norm) for norm in ("none", "bn", "gn")] == [
        "cnn", "cnn_bn", "cnn_gn"]
    assert str(solver.run_folder("resnet", "bn")) == "runs/resnet_bn"
    assert set(plot.HISTORY_KEYS) == set(synthetic_history(True, 300))


def test_table_has_the_reports_columns():
    table = plot.comparison_table([synthetic_history(True, 300), synthetic_history(False, 700)])
    lines = table.strip().splitlines()
    assert len(lines) == 4
    assert "| MLP with BN | 300 | never | 0.9600 | 0.9600 | 0.1000 | 1 min 26 s | 109,568 |" in lines
    assert "| MLP without BN | 700 |" in lines[3] and "109,184" in lines[3]


def test_plot_writes_every_figure_and_the_table(two_runs, tmp_path, tiny_mnist, capsys):
    out = tmp_path / "figures"
    plot.main([*map(str, two_runs), "--figures", str(out), "--data-dir", str(tiny_mnist)])
    expected = {"mlp_bn_train.png", "mlp_bn_test.png", "mlp_train.png", "mlp_test.png",
                "mlp_bn_vs_no_bn.png", "mlp_activation.png", "mlp_bn_confusion.png",
                "mlp_bn_mistakes.png", "mlp_confusion.png", "mlp_mistakes.png", "table.md"}
    assert {p.name for p in out.iterdir()} == expected
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "| MLP with BN | 300 |" in (out / "table.md").read_text()
    assert "| MLP with BN | 300 |" in capsys.readouterr().out


def test_by_default_every_run_under_runs_is_drawn_into_runs_figures(two_runs, tmp_path,
                                                                     monkeypatch):
    """Not into figures/: the committed record changes only through an explicit --figures."""
    monkeypatch.chdir(tmp_path)   # no MNIST in ./data: the confusion figures (tested above) skip
    (tmp_path / "runs").mkdir()
    for run in two_runs:
        run.rename(tmp_path / "runs" / run.name)
    plot.main([])
    drawn = {path.name for path in (tmp_path / "runs" / "figures").iterdir()}
    assert {"mlp_bn_vs_no_bn.png", "table.md"} <= drawn
    assert not (tmp_path / "figures").exists()


def test_plot_without_runs_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        plot.main([])
    assert "no runs found" in str(stop.value.code)


@pytest.mark.parametrize("content, message", [
    ("{broken", "is not valid JSON"),
    ('{"model": "mlp"}', "it lacks norm, params"),
    ("[1, 2]", "it lacks model"),
    (json.dumps(dict(synthetic_history(True, 300), model="os")), "unknown model 'os'"),
])
def test_a_folder_that_is_not_our_run_is_a_one_line_error(tmp_path, content, message):
    (tmp_path / "history.json").write_text(content)
    with pytest.raises(SystemExit) as stop:
        plot.main([str(tmp_path), "--out", str(tmp_path / "figures")])
    assert message in str(stop.value.code) and str(stop.value.code).startswith("error:")


def test_damaged_runs_skip_only_their_own_figures_and_out_is_the_older_alias(
        two_runs, tmp_path, tiny_mnist, capsys):
    """One plot.py call for three things: an unusable checkpoint skips only that run's confusion
    matrix, a run without activation.json only the activation figure, and --out (the older name
    of --figures) still picks the folder."""
    (two_runs[0] / "checkpoint.pt").write_bytes(b"not a checkpoint")   # mlp_bn's
    (two_runs[1] / "activation.json").unlink()                          # mlp's
    out = tmp_path / "old"
    plot.main([*map(str, two_runs), "--out", str(out), "--data-dir", str(tiny_mnist)])
    names = {p.name for p in out.iterdir()}
    err = capsys.readouterr().err
    assert "mlp_confusion.png" in names and "mlp_bn_confusion.png" not in names
    assert "skipping mlp_bn's confusion matrix" in err
    assert "mlp_activation.png" not in names and "mlp_bn_vs_no_bn.png" in names
    assert "skipping mlp_activation.png" in err
    assert "table.md" in names


def test_a_model_with_another_normalization_gets_every_norm_overlaid(two_runs, tmp_path,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)   # no MNIST in ./data: the confusion figures (tested above) skip
    ln_run = tmp_path / "mlp_ln"
    ln_run.mkdir()
    history = dict(synthetic_history(False, 500), norm="ln")
    history["config"] = dict(history["config"], norm="ln")
    (ln_run / "history.json").write_text(json.dumps(history))
    out = tmp_path / "figures"
    plot.main([*map(str, two_runs), str(ln_run), "--figures", str(out)])
    names = {p.name for p in out.iterdir()}
    assert {"mlp_norms.png", "mlp_bn_vs_no_bn.png", "mlp_ln_train.png"} <= names
    assert "| MLP with LayerNorm | 500 |" in (out / "table.md").read_text()


def test_plot_figures_read_at_readme_width(monkeypatch):
    """plot.readme_problems: no figure wider than plot.WIDTH, none more than two panels across,
    no axis with an offset or multiplier (a loss near 1e-3 on a log axis, an accuracy near 1)."""
    import matplotlib.pyplot as plt
    histories = [synthetic_history(True, 300), synthetic_history(False, 700)]
    for history in histories:
        history["train"]["loss"] = [1e-3 * (1 + 1e-4 * k) for k in range(20)]
        history["test"]["acc"] = [0.99991, 0.99995]
    figures = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path: figures.append(fig) or path)
    plot.plot_comparison(histories, "unused.png", "title")
    plot.plot_run(histories[0], plot.Path("unused"))
    assert len(figures) == 3
    for fig in figures:
        assert plot.readme_problems(fig) == []
        plt.close(fig)
