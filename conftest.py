"""What the test modules share: a tiny MNIST written as real IDX files (no test ever downloads),
the real MNIST where ../shared/data has it, a script's training run in this process, and every
study of experiments.py once in --quick mode."""
import json
import os
import struct
from pathlib import Path

import pytest
import torch

import registry
import solver

REPO = Path(__file__).resolve().parent

# One thread per test process, its subprocesses included: pytest.ini runs two workers, one per
# core, and tiny tensors gain nothing from a second thread (the suite's numbers do not depend
# on this: no test compares against numbers recorded at another thread count).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
SHARED_DATA = REPO.parent / "shared" / "data"


def write_idx(path, array):
    """An IDX file as MNIST's: magic 0x0000 08 <ndim>, big-endian dims, then unsigned bytes."""
    header = bytes([0, 0, 8, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + bytes(array.to(torch.uint8).flatten().tolist()))


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
    """300 training and 100 test 'digits': class k is a bright square at a k-dependent place."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 300), ("t10k", 100)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 60, (n, 28, 28), generator=gen)
        for i, label in enumerate(labels.tolist()):
            row, col = 2 + 2 * label, 4 + label
            images[i, row:row + 6, col:col + 6] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def real_mnist():
    """../shared/data, the real MNIST; the test is skipped, saying why, where it is absent."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found in {SHARED_DATA}/MNIST/raw")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo():
    """The repository's folder: the working directory of the tests' real subprocesses."""
    return REPO


def train_script(name, data_dir, out, *flags):
    """`python <name>.py --data-dir ... --out ... <flags>` run in this process.

    On the CPU unless the flags say otherwise: "same seed, same numbers" is promised there, and
    `--device auto` would pick a GPU where the suite runs on a machine that has one.
    """
    script = registry.model_script(name)
    argv = ["--data-dir", str(data_dir), "--out", str(out), "--disp-freq", "1", "--device", "cpu",
            *flags]
    solver.train_run(name, script.build_model, script.config,
                     solver.parse_args(name, script.config, argv))


@pytest.fixture(scope="session")
def train():
    """train(name, data_dir, out, *flags): a model script's run, in this process."""
    return train_script


@pytest.fixture
def exit_code_and_stderr(capsys):
    """exit_code_and_stderr(call): the SystemExit code of call() and what it wrote to stderr."""
    def run(call):
        with pytest.raises(SystemExit) as stop:
            call()
        return stop.value.code, capsys.readouterr().err
    return run


@pytest.fixture(scope="session")
def quick_run(tiny_mnist, tmp_path_factory):
    """`python experiments.py all --quick` once per session on the tiny data: (the JSON of each
    study by name, the figures folder)."""
    import experiments
    root = tmp_path_factory.mktemp("experiments")
    experiments.run_studies(experiments.parse_args(
        ["all", "--quick", "--data-dir", str(tiny_mnist), "--device", "cpu",
         "--out", str(root / "json"), "--figures", str(root / "figures")]))
    results = {study: json.loads((root / "json" / f"{study}.json").read_text())
               for study in experiments.STUDIES}
    return results, root / "figures"


@pytest.hookimpl(tryfirst=True)   # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """With pytest-xdist (pytest.ini runs two workers), the tests that read quick_run share one
    worker, so the studies' quick run is made once, not once per worker."""
    for item in items:
        if "quick_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("quick_run"))
