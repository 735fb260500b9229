"""Running a study page (the form is in studies/common.py): its independent trainings one after
another or in `--jobs` worker processes, each result saved as it finishes, then the study's JSON,
table and figures. None of this is the lesson; it only makes the studies use every core and
lose nothing when stopped.

    <out>/<study>.json           the study: provenance, then what page.assemble() returns, every
                                 float rounded to SIGNIFICANT digits (tables and figures read it)
    <out>/<study>.partial/       while it runs: run.json (what the trainings were made with) and
                                 one <n>.json per finished training; removed when the study ends

Rerun after an interruption, the same command reuses the finished trainings, so the numbers are
those of an uninterrupted run. It starts over, saying why, where the saved trainings were made
on another CPU type, thread count, torch, device, code or set of trainings: every study's
numbers come from one kind of machine and one version of the code. The numbers never depend on
--jobs: each training seeds its own randomness and sees the same data in any process, and every
result goes through JSON before assemble() sees it, whether it came from a worker, this process
or a file.
"""
import hashlib
import importlib
import json
import math
import multiprocessing
import re
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

import plot
import plumbing
import registry
import solver
from studies.common import Study, first_images

SIGNIFICANT = 5   # digits kept of every float in a study's JSON: tables print at most 4

CODE = ["solver.py", "batchnorm.py", "norms.py", "mlp.py", "cnn.py", "resnet.py",
        "studies/*.py"]   # what a study's numbers depend on, for the resume check


# ----------------------------------------------------------------------------- the study

def run_study(page, study):
    """Every training of a study page, then its JSON, table and figures; returns the JSON."""
    jobs = page.trainings(study)
    out = Path(study.args.out)
    partial = Partial(out / f"{page.NAME}.partial", made_with(page, study, jobs))
    results = partial.load()
    start, before = time.perf_counter(), len(results)
    todo = [i for i in range(len(jobs)) if i not in results]
    if before:
        print(f"{page.NAME}: {before} of {len(jobs)} trainings reused from {partial.folder}",
              flush=True)
    for index, result in trainings_done(page, study, jobs, todo):
        elapsed = time.perf_counter() - start
        results[index] = partial.save(index, result, elapsed)
        left = elapsed / (len(results) - before) * (len(jobs) - len(results))
        print(f"{page.NAME:11s} {describe_job(jobs[index]):40s} {summarize(result):16s} "
              f"{len(results):>3d}/{len(jobs)}  {elapsed:6.0f} s, about "
              f"{registry.format_time(left)} left", flush=True)
    wall = partial.wall_s + time.perf_counter() - start   # over all its sittings
    record = rounded({"provenance": provenance(study, wall),
                      **page.assemble(study, jobs, [results[i] for i in range(len(jobs))])})
    out.mkdir(parents=True, exist_ok=True)
    plumbing.save_files({out / f"{page.NAME}.json": record_writer(record)})
    partial.remove()
    print(page.table(record))
    if study.args.figures is not None:   # None: tables only (--quick without --figures)
        save_figures(page, record, study.args.figures)
    return record


def save_figures(page, record, figures):
    """A study's figures from its JSON, into the folder `figures`, in plot.py's style."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    for fig, name in zip(page.draw(record), page.FIGURES, strict=True):
        plot.save_figure(fig, figures / name)
    return [figures / name for name in page.FIGURES]


def provenance(study, wall_s):
    """Where a study's numbers come from: its JSON's top-level `provenance`."""
    return {"seeds": list(study.seeds), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "jobs": study.args.jobs,
            "cpu": plumbing.cpu_name(), "device": str(study.device),
            "command": shlex.join(["python", *sys.argv]), "wall_s": round(wall_s),
            "rounded": f"floats to {SIGNIFICANT} significant digits"}


def rounded(value):
    """`value` with every float cut to SIGNIFICANT digits (JSON stays small and readable)."""
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item) for item in value]
    return value


def record_writer(record):
    """Write a study's JSON one key per line and each list of numbers on one line: small and
    still readable (and diffable) in the repository."""
    text = json.dumps(record, indent=1)
    text = re.sub(r"\[([^\[\]{}]*)\]", lambda m: "[" + re.sub(r"\n\s*", " ", m[1]).strip() + "]",
                  text)
    return lambda path: path.write_text(text + "\n")


def describe_job(job):
    """"mlp, bn, lr 0.1, seed 0": a job's settings, for the progress line."""
    return ", ".join(f"{value}" if key in ("network", "arm") else f"{key} {value}"
                     for key, value in job.items())


def summarize(result):
    """The progress line's verdict of one training: its outcome and test accuracy, if any."""
    acc = result.get("test_acc")
    return " ".join(filter(None, [result.get("outcome"),
                                  f"{acc:.2%}" if isinstance(acc, float) else None]))


def as_json(result):
    """The result as it reads back from a file: tuples become lists, keys strings."""
    return json.loads(json.dumps(result))


# ----------------------------------------------------------------------------- saved trainings

def code_digest():
    """A digest of the code the numbers depend on (CODE): a change of it starts a study over."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for path in sorted(p for pattern in CODE for p in root.glob(pattern)):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def made_with(page, study, jobs):
    """What a study's saved trainings must share with this run to be reused."""
    return {"study": page.NAME, "jobs": jobs, "quick": study.quick,
            "data": [len(part) for part in study.data], "cpu": plumbing.cpu_name(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": str(study.device), "code": code_digest()}


class Partial:
    """A study's finished trainings while it runs: <folder>/run.json and <n>.json per training."""

    def __init__(self, folder, identity):
        self.folder, self.identity = Path(folder), identity

    def load(self):
        """{index: result} of the trainings saved by an earlier run of the same study on the same
        kind of machine; otherwise the folder is emptied, saying why, and {} is returned."""
        try:
            saved = json.loads((self.folder / "run.json").read_text())
        except (OSError, ValueError):
            saved = None
        if saved is not None and {k: saved.get(k) for k in self.identity} != self.identity:
            differ = ", ".join(k for k in self.identity if saved.get(k) != self.identity[k])
            print(f"{self.identity['study']}: starting over; the trainings saved in "
                  f"{self.folder} were made with another {differ}", flush=True)
            saved = None
        if saved is None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            self.wall_s = 0.0
            plumbing.save_files({self.folder / "run.json":
                                 plumbing.json_writer({**self.identity, "wall_s": 0.0})})
            return {}
        self.wall_s = saved.get("wall_s", 0.0)
        results = {}
        for path in self.folder.glob("[0-9]*.json"):
            try:
                results[int(path.stem)] = json.loads(path.read_text())
            except (OSError, ValueError):   # cut short while written: trained again
                pass
        return results

    def save(self, index, result, sitting_s):
        """Save one finished training, and the study's wall time so far (this sitting's
        `sitting_s` after the earlier ones'); returns the result as read back (JSON values)."""
        result = as_json(result)
        plumbing.save_files({
            self.folder / f"{index}.json": plumbing.json_writer(result),
            self.folder / "run.json": plumbing.json_writer(
                {**self.identity, "wall_s": self.wall_s + sitting_s})})
        return result

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)


# ----------------------------------------------------------------------------- workers

def trainings_done(page, study, jobs, todo):
    """(index, result) of each job in `todo` as it finishes: in this process with --jobs 1,
    else in that many worker processes (spawned: each loads the data itself, at --threads)."""
    workers = min(study.args.jobs, len(todo))
    if workers <= 1:
        for index in todo:
            yield index, page.train_one(study, jobs[index])
        return
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers, initializer=start_worker, initargs=(study.args,))
    try:
        tasks = [(page.__name__, index, jobs[index]) for index in todo]
        for index, result in pool.imap_unordered(train_in_worker, tasks):
            yield index, result
        pool.close()
    finally:
        pool.terminate()   # Ctrl-C, SIGTERM or an error: the workers stop at once
        pool.join()


_worker_study = None   # a worker process's Study


def start_worker(args):
    """A worker: Ctrl-C is the parent's to handle; the same threads, device and data."""
    global _worker_study
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_study = make_study(args)


def train_in_worker(task):
    page_module, index, job = task
    return index, as_json(importlib.import_module(page_module).train_one(_worker_study, job))


def make_study(args):
    """The Study that experiments.py's arguments describe: threads, device, the data (a slice
    of it with --quick). The worker processes make theirs with this too."""
    torch.set_num_threads(args.threads)   # recorded in each study's provenance
    device = plumbing.pick_device(args.device)
    data = solver.load_mnist(args.data_dir, device)
    if args.quick:   # a slice of MNIST: seconds, not minutes
        data = first_images(data, 1200, 1000)
    return Study(args, data)
