"""Why and when Batch Normalization helps, measured: short seeded studies beyond the report.

    python experiments.py figure1      # the BN paper's Figure 1, its network and its three panels
    python experiments.py lr           # learning-rate robustness, with and without BN
    python experiments.py batch        # batch size: eval mode against a forgotten model.eval()
    python experiments.py momentum     # the momentum convention mix-up (0.9 here is 0.1 in torch)
    python experiments.py init         # initialisation scale, as in CS231n's assignment
    python experiments.py population   # momentum running estimates against population statistics
    python experiments.py detach       # the BN paper's section 2: detached statistics
    python experiments.py small_batch  # BN, Batch Renorm, GroupNorm, LayerNorm at batches 2-128
    python experiments.py placement    # BN before or after the ReLU
    python experiments.py diagnostics  # per-layer activations, gradients, update ratios
    python experiments.py all          # every study (docs/studies.md gives each one's time)
    python experiments.py all --quick  # every study shrunk to seconds, for tests and a first look

Each study is a page of its own in studies/ (studies/common.py holds what they share). It
trains with solver.py's loop (`solver.train`, recording through its per-window callback) and
batchnorm.py's layers, saves its numbers as <out>/<study>.json, draws one figure into
--figures and prints a small table. Every study is seeded: the same command gives the same
numbers on the CPU. Unless a study says otherwise, training uses the report's SGD (momentum
0.9, weight decay 1e-4) at a constant rate, on the report's MLP (mlp.build_model).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

import plot
import plumbing
import solver
from studies import batch, detach, figure1, init_scale, lr, momentum, population
from studies import placement, small_batch
from studies import diagnostics
from studies import ics, noisy, smoothness
# The names other code and the tests use, importable from here wherever the studies live:
from studies.batch import batch_statistics_accuracy           # noqa: F401
from studies.common import Study, outcome                      # noqa: F401
from studies.figure1 import figure1_network                   # noqa: F401
from studies.diagnostics import layer_diagnostics            # noqa: F401
from studies.noisy import BatchNoise                         # noqa: F401
from studies.smoothness import along_gradient                # noqa: F401

STUDIES = {  # the name on the command line -> its page in studies/ (run(study), FIGURES)
    "figure1": figure1, "lr": lr, "batch": batch, "momentum": momentum, "init": init_scale,
    "population": population, "detach": detach,
    "small_batch": small_batch, "placement": placement,
    "diagnostics": diagnostics,
    "noisy": noisy, "ics": ics, "smoothness": smoothness}
FIGURES = {name: study.FIGURES for name, study in STUDIES.items()}   # the files each one draws


def redraw(args):
    """The figures of the chosen studies again, from their saved JSON: a change of plotting
    needs no second run of the training."""
    names = STUDIES if args.study == "all" else [args.study]
    for name in [n for n in names if hasattr(STUDIES[n], "draw")]:
        path = Path(args.out) / f"{name}.json"
        if not path.exists():
            sys.exit(f"error: {path} not found; run `python experiments.py {name}` first")
        fig = STUDIES[name].draw(json.loads(path.read_text()))
        Path(args.figures).mkdir(parents=True, exist_ok=True)
        plot.save_figure(fig, Path(args.figures) / STUDIES[name].FIGURES[0])
        print(f"redrew {Path(args.figures) / STUDIES[name].FIGURES[0]} from {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("study", choices=[*STUDIES, "all"])
    parser.add_argument("--data-dir", default="data", help="a folder holding MNIST/raw/")
    parser.add_argument("--device", choices=plumbing.DEVICES, default="auto")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=plumbing.positive_int, default=None,
                        help="seeds per setting: --seed .. --seed + N - 1 (default: 3, "
                             "1 with --quick)")
    parser.add_argument("--out", default="runs/experiments", help="where each study's JSON goes")
    parser.add_argument("--figures", default="figures", help="where each study's figure goes")
    parser.add_argument("--quick", action="store_true", help="every study shrunk to seconds")
    parser.add_argument("--redraw", action="store_true",
                        help="draw the figure again from <out>/<study>.json, without training "
                             "(the studies that have a draw function)")
    parser.add_argument("--threads", type=plumbing.positive_int, default=None,
                        help="torch's intra-op threads (default: torch's choice here); 1 is "
                             "faster at tiny batches and when other work shares the cores")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    if args.threads:
        torch.set_num_threads(args.threads)   # recorded in each study's provenance
    if args.redraw:
        redraw(args)
        return
    with plumbing.one_line_failures(lambda: f"the studies that finished are saved in {args.out}"):
        device = plumbing.pick_device(args.device)
        data = solver.load_mnist(args.data_dir, device)
        if args.quick:   # a slice of MNIST: seconds, not minutes
            data = (data[0][:1200], data[1][:1200], data[2][:1000], data[3][:1000])
        study = Study(args, data)
        for name in STUDIES if args.study == "all" else [args.study]:
            STUDIES[name].run(study)
        print(f"experiments.py {args.study}{' --quick' if args.quick else ''}: "
              f"{time.perf_counter() - study.start:.0f} s")


if __name__ == "__main__":
    main()
