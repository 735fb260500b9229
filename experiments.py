"""Why and when Batch Normalization helps, measured: short seeded studies beyond the report.

    python experiments.py STUDY           # one study (the list: python experiments.py --help),
                                          # into runs/experiments/ and runs/figures/
    python experiments.py all --quick     # every study shrunk to seconds: shows that it runs
    python experiments.py all --redraw    # the record's figures/ from the record's results/
    python experiments.py --tables        # the tables of README and docs/studies.md, from results/
    python experiments.py STUDY --out results --figures figures   # a study's record, rewritten

Each study is a page of its own in studies/, in the one form that studies/common.py describes:
its trainings (independent jobs: a setting, an arm, a seed), one training, the JSON assembled
from their results, its table and its figures. It trains with solver.py's loop (`solver.train`,
watched through `on_step` and `on_window`) and batchnorm.py's layers; studies/runner.py runs its
trainings in --jobs worker processes, saves each as it finishes (the same command continues an
interrupted study), then saves <out>/<study>.json, draws its figures into --figures and prints
its table. Every training is seeded: the same command gives the same numbers on the same CPU
type and thread count, for any --jobs.

Unless a study says otherwise, training uses the report's SGD (momentum 0.9, weight decay 1e-4)
at a constant rate on the report's MLP.

The committed record (results/, figures/, the tables in README.md and docs/studies.md) changes
only when asked: by an explicit --out/--figures, --redraw or --tables, or by reproduce.py.
    python experiments.py --replication ../shared/replication   # results/ beside another CPU's
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import plumbing
from studies import (batch, detach, diagnostics, figure1, ics, init_scale, lr, momentum, noisy,
                     placement, population, scale, small_batch, smoothness)
from studies import replication, tables
from studies.runner import make_study, record_writer, run_study, save_figures

PAGES = (figure1, lr, batch, momentum, init_scale, population, detach, scale, small_batch,
         placement, diagnostics, noisy, ics, smoothness)
STUDIES = {page.NAME: page for page in PAGES}   # the name on the command line -> its page


def usage():
    """The list of studies for --help, built from the pages themselves."""
    width = max(map(len, STUDIES))
    return "studies:\n" + "\n".join(f"  {name:{width}s}  {page.QUESTION}"
                                      for name, page in STUDIES.items())


RECORD = "results"   # the committed study JSON that --redraw and --tables read by default


def redraw(args):
    """The figures of the chosen studies again, from their saved JSON (results/ unless --out
    says otherwise): the record's figures are drawn from the record's numbers, without training."""
    for name in STUDIES if args.study == "all" else [args.study]:
        path = Path(args.out) / f"{name}.json"
        if not path.exists():
            sys.exit(f"error: {path} not found; run `python experiments.py {name} --out "
                     f"{args.out}` first")
        for figure in save_figures(STUDIES[name], json.loads(path.read_text()), args.figures):
            print(f"redrew {figure} from {path}")


def compare_with(theirs, out):
    """<out>/replication.json: our studies' numbers beside another machine's (replication.py)."""
    if not Path(theirs).is_dir():
        sys.exit(f"error: {theirs} is not a folder of study JSON files")
    record = replication.compare_machines(out, theirs, STUDIES)
    plumbing.save_files({Path(out) / "replication.json": record_writer(record)})
    print(replication.table(record))


def cores():
    """The cores this process may use: --jobs' default."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=usage(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", choices=[*STUDIES, "all"],
                        help="a study, or all (not needed with --tables)")
    parser.add_argument("--data-dir", default="data", help="a folder holding MNIST/raw/")
    parser.add_argument("--device", choices=plumbing.DEVICES, default="auto")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=plumbing.positive_int, default=None,
                        help="seeds per setting: --seed .. --seed + N - 1 (default: 5, "
                             "1 with --quick)")
    parser.add_argument("--out", default=None,
                        help="where each study's JSON goes (default: runs/experiments); "
                             f"where --redraw and --tables read it (default: {RECORD})")
    parser.add_argument("--figures", default=None,
                        help="where each study's figures go (default: runs/figures; with "
                             "--redraw, figures; with --quick none are drawn unless given)")
    parser.add_argument("--quick", action="store_true",
                        help="every study shrunk to seconds, one seed, one job: shows that its "
                             "code runs")
    parser.add_argument("--redraw", action="store_true",
                        help="draw the figures again from <out>/<study>.json, without training")
    parser.add_argument("--tables", action="store_true",
                        help="rewrite the generated tables of README.md and docs/studies.md "
                             "from <out>/")
    parser.add_argument("--replication", metavar="DIR", default=None,
                        help="compare <out>/ with another machine's JSON of the same studies in "
                             "DIR (../shared/replication) into <out>/replication.json")
    parser.add_argument("--threads", type=plumbing.positive_int, default=1,
                        help="torch's intra-op threads per training; 1 is fastest at the "
                             "studies' small batches")
    parser.add_argument("--jobs", type=plumbing.positive_int, default=None,
                        help="trainings run at once, each in a worker process at --threads "
                             f"(default: the cores on a CPU, {cores()} here; 1 on a GPU and "
                             "with --quick)")
    args = parser.parse_args(argv)
    if args.study is None and not (args.tables or args.replication):
        parser.error("name a study (or all), or give --tables or --replication")
    if args.seeds is None:
        args.seeds = 1 if args.quick else 5
    if args.jobs is None:   # one GPU is not shared between workers
        on_cpu = args.device == "cpu" or (args.device == "auto"
                                           and plumbing.pick_device("auto").type == "cpu")
        args.jobs = cores() if on_cpu and not args.quick else 1
    if args.out is None:
        args.out = (RECORD if (args.redraw or args.tables or args.replication)
                    else "runs/experiments")
    if args.figures is None and args.redraw:
        args.figures = "figures"
    elif args.figures is None and not args.quick:
        args.figures = "runs/figures"
    return args


def run_studies(args):
    """The studies that parse_args' `args` name, in this process: a problem raises
    plumbing.SolverError, and no signal handler is touched (the tests call this)."""
    study = make_study(args)
    for name in STUDIES if args.study == "all" else [args.study]:
        run_study(STUDIES[name], study)
    print(f"experiments.py {args.study}{' --quick' if args.quick else ''}: "
          f"{time.perf_counter() - study.start:.0f} s")


def main(argv=None):
    """`python experiments.py ...`: every failure a user can cause as one line (plumbing.py)."""
    args = parse_args(argv)
    if args.replication:
        compare_with(args.replication, args.out)
    if args.tables:
        with plumbing.one_line_failures(lambda: "the other tables are written"):
            tables.rewrite(args.out, STUDIES)
    if args.study is None:
        return
    if args.redraw:
        redraw(args)
        return
    again = plumbing.command_line("experiments.py", argv)
    with plumbing.one_line_failures(
            lambda: f"the studies and trainings that finished are saved in {args.out}; "
                    f"the same command continues:\n  {again}"):
        run_studies(args)


if __name__ == "__main__":
    main()
