"""bench.py as a smoke test: a few steps of every measurement, on the tiny IDX data."""
import bench


def test_bench_runs_every_measurement(tiny_mnist, capsys):
    bench.main(["--steps", "2", "--repeats", "1", "--models", "mlp", "cnn", "--data-dir", str(tiny_mnist)])
    out = capsys.readouterr().out
    table = out.split("\n\n")[-1].strip().splitlines()
    assert len(table) == 2 + 4   # header, rule, two models without and with BN
    assert table[3].startswith("| mlp + BN |") and table[3].split("|")[7].strip() != "-"
