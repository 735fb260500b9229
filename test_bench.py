"""bench.py: a smoke test of every measurement on the tiny IDX data, and its clear errors."""
import pytest

import bench
import plumbing
import solver


def test_bench_runs_every_measurement(tiny_mnist, capsys):
    bench.main(["--steps", "2", "--repeats", "1", "--models", "mlp", "cnn", "--data-dir", str(tiny_mnist)])
    out = capsys.readouterr().out
    table, backward = (part.strip().splitlines() for part in out.split("\n\n")[-2:])
    assert len(table) == 2 + 4   # header, rule, two models without and with BN
    assert table[3].startswith("| mlp + BN |") and table[3].split("|")[7].strip() != "-"
    assert table[3].split("|")[9].strip() != "-" and table[2].split("|")[9].strip() == "-"   # folded eval
    assert len(backward) == 2 + 3 and all(float(row.split("|")[4]) > 0 for row in backward[2:])


@pytest.mark.parametrize("flags, message", [
    (["--models", "vgg"], "invalid choice: 'vgg'"),
    (["--steps", "0"], "must be a positive integer"),
    (["--steps", "601"], "at most 600"),
])
def test_bad_flags_exit_2_with_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(flags)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_too_few_images_for_the_steps_is_a_clear_error(tiny_mnist):
    with pytest.raises(SystemExit) as stop:   # the tiny set has 300 training images: 3 steps
        bench.main(["--steps", "4", "--repeats", "1", "--models", "mlp", "--data-dir", str(tiny_mnist)])
    assert "needs 400 training images" in str(stop.value.code) and "use fewer --steps" in str(stop.value.code)


def test_missing_mnist_is_one_line_not_a_traceback(monkeypatch):
    def no_mnist(data_dir, device):
        raise plumbing.SolverError(f"MNIST is not in {data_dir}/MNIST/raw")
    monkeypatch.setattr(solver, "load_mnist", no_mnist)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--data-dir", "nowhere", "--models", "mlp"])
    assert stop.value.code == "error: MNIST is not in nowhere/MNIST/raw"
