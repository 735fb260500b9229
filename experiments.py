"""Why and when Batch Normalization helps, measured: short seeded studies beyond the report.

    python experiments.py STUDY           # one study (the list: python experiments.py --help)
    python experiments.py all             # every study (docs/studies.md gives each one's time)
    python experiments.py all --quick     # every study shrunk to seconds: shows that it runs
                                          # (figures only where --figures says)
    python experiments.py STUDY --redraw  # its figures again from <out>/STUDY.json

Each study is a page of its own in studies/, in the one form that studies/common.py describes:
its trainings (independent jobs: a setting, an arm, a seed), one training, the JSON assembled
from their results, its table and its figures. It trains with solver.py's loop (`solver.train`,
watched through `on_step` and `on_window`) and batchnorm.py's layers, saves <out>/<study>.json,
draws its figures into --figures and prints its table. Every study is seeded: the same command
gives the same numbers on the same CPU and thread count. Unless a study says otherwise, training
uses the report's SGD (momentum 0.9, weight decay 1e-4) at a constant rate on the report's MLP.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

import plumbing
import solver
from studies import (batch, detach, diagnostics, figure1, ics, init_scale, lr, momentum, noisy,
                     placement, population, small_batch, smoothness)
from studies.common import Study, first_images, run_study, save_figures

PAGES = (figure1, lr, batch, momentum, init_scale, population, detach, small_batch, placement,
         diagnostics, noisy, ics, smoothness)
STUDIES = {page.NAME: page for page in PAGES}   # the name on the command line -> its page


def usage():
    """The list of studies for --help, built from the pages themselves."""
    width = max(map(len, STUDIES))
    return "studies:\n" + "\n".join(f"  {name:{width}s}  {page.QUESTION}"
                                      for name, page in STUDIES.items())


def redraw(args):
    """The figures of the chosen studies again, from their saved JSON: a change of plotting
    needs no second run of the training."""
    for name in STUDIES if args.study == "all" else [args.study]:
        path = Path(args.out) / f"{name}.json"
        if not path.exists():
            sys.exit(f"error: {path} not found; run `python experiments.py {name}` first")
        for figure in save_figures(STUDIES[name], json.loads(path.read_text()), args.figures):
            print(f"redrew {figure} from {path}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=usage(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=[*STUDIES, "all"])
    parser.add_argument("--data-dir", default="data", help="a folder holding MNIST/raw/")
    parser.add_argument("--device", choices=plumbing.DEVICES, default="auto")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=plumbing.positive_int, default=None,
                        help="seeds per setting: --seed .. --seed + N - 1 (default: 3, "
                             "1 with --quick)")
    parser.add_argument("--out", default="runs/experiments", help="where each study's JSON goes")
    parser.add_argument("--figures", default=None,
                        help="where each study's figures go (default: figures; with --quick "
                             "none are drawn unless --figures is given)")
    parser.add_argument("--quick", action="store_true",
                        help="every study shrunk to seconds, one seed: shows that its code runs")
    parser.add_argument("--redraw", action="store_true",
                        help="draw the figure again from <out>/<study>.json, without training "
                             "(the studies that have a draw function)")
    parser.add_argument("--threads", type=plumbing.positive_int, default=1,
                        help="torch's intra-op threads; 1 is faster at the studies' small "
                             "batches and when other work shares the cores")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    if args.figures is None and (args.redraw or not args.quick):
        args.figures = "figures"
    return args


def run_studies(args):
    """The studies that parse_args' `args` name, in this process: a problem raises
    plumbing.SolverError, and no signal handler is touched (the tests call this)."""
    torch.set_num_threads(args.threads)   # recorded in each study's provenance
    device = plumbing.pick_device(args.device)
    data = solver.load_mnist(args.data_dir, device)
    if args.quick:   # a slice of MNIST: seconds, not minutes
        data = first_images(data, 1200, 1000)
    study = Study(args, data)
    for name in STUDIES if args.study == "all" else [args.study]:
        run_study(STUDIES[name], study)
    print(f"experiments.py {args.study}{' --quick' if args.quick else ''}: "
          f"{time.perf_counter() - study.start:.0f} s")


def main(argv=None):
    """`python experiments.py ...`: every failure a user can cause as one line (plumbing.py)."""
    args = parse_args(argv)
    if args.redraw:
        redraw(args)
        return
    with plumbing.one_line_failures(lambda: f"the studies that finished are saved in {args.out}"):
        run_studies(args)


if __name__ == "__main__":
    main()
