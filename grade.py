"""Grade the five exercises of a batchnorm.py: one line each, then the score.

    python grade.py                  # ./batchnorm.py: the copy it stands in
    python grade.py path/to/batchnorm.py
    python grade.py --json           # the same as JSON on stdout, for an autograding platform

Each exercise is passed, not done yet (its NotImplementedError is still there) or failed, with
the first check that fails in one sentence (checks.py: the suite's own checks against torch).
The exit status is 0 only when all five pass. The student's code runs in a separate process
with a time limit per exercise, so a syntax error, an exception, a crash or an endless loop is
a failed exercise and a line saying what happened, never a traceback.
"""
import argparse
import ast
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
TAG = "@grade@ "          # the worker's lines on stdout start with it; anything else is ignored
TORCH_START_S = 120       # importing torch on a loaded machine


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="grade.py", description=__doc__.split("\n")[0])
    parser.add_argument("path", nargs="?", default="batchnorm.py",
                        help="the batchnorm module to grade (default: ./batchnorm.py)")
    parser.add_argument("--json", action="store_true", help="write the result as JSON on stdout")
    parser.add_argument("--time-limit", type=float, default=30.0,
                        help="seconds each exercise's checks may take (default: %(default)s)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--earlier", default="{}", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def exercise_titles():
    """checks.EXERCISES, read from its source: this process never imports torch."""
    for node in ast.parse((HERE / "checks.py").read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "EXERCISES":
            return ast.literal_eval(node.value)
    raise RuntimeError("checks.py defines no EXERCISES")

# ----------------------------------------------------------------------------- the worker

def worker(args):
    """Run in its own process: import torch, checks and the student's module, then grade the
    exercises from args.start on, one TAG line per event on the original stdout. The student's
    prints go to stderr."""
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                       # the student's prints, even from C, go to stderr
    sys.stdout = sys.stderr

    def send(**event):
        channel.write(TAG + json.dumps(event) + "\n")
        channel.flush()

    import importlib.util

    import torch

    sys.path.insert(0, str(HERE))
    import checks
    torch.set_num_threads(1)
    send(event="loaded")
    path = Path(args.path).resolve()
    module = None
    try:
        spec = importlib.util.spec_from_file_location("batchnorm", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["batchnorm"] = module
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as error:   # SyntaxError, an exception at import, sys.exit()
        if isinstance(error, SyntaxError):
            what = f"SyntaxError at line {error.lineno}: {error.msg}"
        else:
            what = f"{type(error).__name__}: {error}".strip() + checks.where_in(error, module)
        send(event="import_failed", message=f"{path.name} cannot be imported: {what}"[:400])
        return
    send(event="imported")
    earlier = {int(k): v for k, v in json.loads(args.earlier).items()}
    checks.known(module, earlier)
    for exercise in sorted(checks.EXERCISES):
        if exercise < args.start:
            continue
        send(event="started", exercise=exercise)
        status, message = checks.grade_exercise(module, exercise)
        send(event="result", exercise=exercise, status=status, message=message)

# ----------------------------------------------------------------------------- the parent

class Worker:
    """A worker process and a thread that queues its TAG lines (None at its end)."""

    def __init__(self, path, start, earlier):
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(path),
             "--start", str(start), "--earlier", json.dumps(earlier)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr,
            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1"))
        self.events = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.process.stdout:
            text = raw.decode("utf-8", "replace")
            if text.startswith(TAG):
                self.events.put(json.loads(text[len(TAG):]))
        self.events.put(None)

    def next(self, timeout):
        """The next event; "timeout" after `timeout` s, None if the worker ended."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return "timeout"

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def how_it_ended(self):
        self.process.wait()
        self.stderr.seek(0)
        lines = [l for l in self.stderr.read().decode("utf-8", "replace").splitlines() if l.strip()]
        last = f": {lines[-1].strip()[:200]}" if lines else ""
        return f"the process running the checks ended (exit status {self.process.returncode}){last}"


def grade(path, time_limit):
    """[(exercise, title, status, message)] of the module at path."""
    titles = exercise_titles()
    numbers = sorted(titles)
    results = {}
    if not path.is_file():
        return [(n, titles[n], "failed", f"there is no file {path}") for n in numbers]
    try:   # a syntax error is found here, without starting a worker
        compile(path.read_bytes(), str(path), "exec")
    except (SyntaxError, ValueError) as error:
        where = f" at line {error.lineno}" if getattr(error, "lineno", None) else ""
        why = f"{path.name} cannot be imported: {type(error).__name__}{where}: " + (
            getattr(error, "msg", None) or str(error))
        return [(n, titles[n], "failed", why) for n in numbers]
    start = 1
    while start <= max(numbers):
        worker_ = Worker(path, start, {n: r[0] for n, r in results.items()})
        current, limit = None, TORCH_START_S
        try:
            while True:
                event = worker_.next(limit)
                if event == "timeout" or event is None:
                    if event is None:
                        why = worker_.how_it_ended()
                    elif current is None:
                        why = f"importing {path.name} did not finish within {time_limit:g} s"
                    else:
                        why = (f"did not finish within {time_limit:g} s: an endless loop, or far "
                               "too slow for these small inputs")
                    if current is None:   # nothing could be checked
                        for n in numbers:
                            results.setdefault(n, ("failed", why))
                        start = max(numbers) + 1
                    else:
                        results[current] = ("failed", why)
                        start = current + 1
                    break
                kind = event["event"]
                if kind == "loaded":
                    limit = time_limit
                elif kind == "import_failed":
                    for n in numbers:
                        results[n] = ("failed", event["message"])
                    start = max(numbers) + 1
                    break
                elif kind == "started":
                    current = event["exercise"]
                elif kind == "result":
                    results[event["exercise"]] = (event["status"], event["message"])
                    current = None
                    if event["exercise"] == max(numbers):
                        start = max(numbers) + 1
                        break
        finally:
            worker_.stop()
    return [(n, titles[n], *results[n]) for n in numbers]


def line(exercise, title, status, message):
    """The same line as checks.line, without importing torch here."""
    return f"exercise {exercise} ({title}): {status}" + (f": {message}" if message else "")


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    path = Path(args.path)
    results = grade(path, args.time_limit)
    score = sum(status == "passed" for _, _, status, _ in results)
    if args.json:
        print(json.dumps({"path": str(path), "score": score, "out_of": len(results),
                          "exercises": [{"exercise": n, "title": t, "status": s, "message": m}
                                        for n, t, s, m in results]}, ensure_ascii=False,
                         indent=1))
    else:
        for result in results:
            print(line(*result))
        print(f"score: {score} of {len(results)}")
    sys.exit(0 if score == len(results) else 1)


if __name__ == "__main__":
    main()
