"""The student's copy of this repository: BatchNorm left to write, in five exercises.

    python exercises.py make DIR

writes to DIR (new or empty) every file git tracks here, without the history, where:
  - batchnorm.py keeps each `# exercise N: <what>` ... `# end of exercise N` block's two comment
    lines and has, between them, `raise NotImplementedError("exercise N: <what>")`: signatures,
    docstrings (the equations) and everything outside the blocks stay as given;
  - what would compute the same by other means calls the student's code or torch's instead:
    batch_norm_reference is torch's F.batch_norm, recalibrate takes its statistics from the
    student's BatchNormFunction and update_running_estimates, studies/batch.py's x_hat comes from
    BatchNormFunction, test_normalizations.py's Batch Renorm formula from torch.var_mean;
  - norms.norm_layers first checks that the exercises its layer runs on are done (one line
    naming the first that is not, from the scripts), and conftest.py turns a test that fails
    for want of an exercise into a skip that names it (test_batchnorm.py's test_exercise fails,
    with grade.py's line);
  - the teacher's files (TEACHER_ONLY: the mistakes injected into the solution) are left out.
Then every line of the solution's blocks and replaced functions is looked for in every file of
DIR: make fails if one is found. docs/exercises.md says more.
"""
import argparse
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEACHER_ONLY = {"test_exercises.py"}   # holds the solution's mistakes and another solution
START = re.compile(r"^(\s*)# exercise (\d): (.+)$")
END = re.compile(r"^\s*# end of exercise (\d)\s*$")

# ----------------------------------------------------------------------------- the exercises

def blocks(text):
    """[(first line, last line, exercise, what, indent)] of the exercise blocks in text: the
    lines strictly between a `# exercise N: what` comment and its `# end of exercise N`."""
    found, lines, open_ = [], text.splitlines(), None
    for index, line in enumerate(lines):
        start, end = START.match(line), END.match(line)
        if start:
            if open_ is not None:
                raise ValueError(f"line {index + 1}: exercise {start.group(2)} starts inside "
                                 f"exercise {open_[1]}")
            open_ = (index, int(start.group(2)), start.group(3).strip(), start.group(1))
        elif end:
            if open_ is None or int(end.group(1)) != open_[1]:
                raise ValueError(f"line {index + 1}: `# end of exercise {end.group(1)}` "
                                 "without its start")
            found.append((open_[0] + 1, index - 1, open_[1], open_[2], open_[3]))
            open_ = None
    if open_ is not None:
        raise ValueError(f"exercise {open_[1]} (line {open_[0] + 1}) has no end")
    return found


def stub(text):
    """text with each block's lines replaced by the raise of its exercise's stub."""
    lines = text.splitlines()
    for first, last, exercise, what, indent in reversed(blocks(text)):
        message = f"exercise {exercise}: {what}".replace("\\", "\\\\").replace('"', '\\"')
        lines[first:last + 1] = [f'{indent}raise NotImplementedError("{message}")']
    return "\n".join(lines) + "\n"


def paste(text, bodies):
    """text (a stubbed batchnorm.py) with its blocks' stubs replaced by bodies, a list of
    block texts in block order (the solution's, to paste back, or another implementation's)."""
    lines = text.splitlines()
    found = blocks(text)
    if len(found) != len(bodies):
        raise ValueError(f"{len(found)} blocks, {len(bodies)} bodies")
    for (first, last, *_), body in reversed(list(zip(found, bodies))):
        lines[first:last + 1] = body.splitlines()
    return "\n".join(lines) + "\n"


def block_texts(text):
    lines = text.splitlines()
    return ["\n".join(lines[first:last + 1]) for first, last, *_ in blocks(text)]

# ----------------------------------------------------------------------------- rerouted functions

REFERENCE_BODY = '''\
    # In the student's copy: torch's own eq. 2.1, which autograd differentiates.
    return torch.nn.functional.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
'''

RECALIBRATE_BODY = '''\
    layers = batchnorm_layers(model)
    sums = {layer: [0, 0, 0] for layer in layers}   # sum of means, sum of variances, batches

    def record(layer, inputs):
        # The batch's mean and biased variance, by your BatchNormFunction (exercise 1).
        x = inputs[0]
        unit = x.new_ones(x.shape[1])
        _, mean, var = BatchNormFunction.apply(x, unit, unit * 0, layer.eps)
        sums[layer][0] += mean
        sums[layer][1] += var
        sums[layer][2] += 1
        layer.values_per_channel = x.numel() // x.shape[1]

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    model.train()
    try:
        for batch in batches:
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    for layer in layers:
        mean_sum, var_sum, count = sums[layer]
        # eq. 2.2 with momentum 0, by your update_running_estimates (exercise 4): the averages
        # become the running estimates; it counts no batch here.
        momentum, tracked = layer.momentum, layer.num_batches_tracked.clone()
        layer.momentum = 0.0
        try:
            layer.update_running_estimates(mean_sum / count, var_sum / count,
                                           layer.values_per_channel)
        finally:
            layer.momentum = momentum
            layer.num_batches_tracked.copy_(tracked)
        del layer.values_per_channel
    return model.eval()
'''

REROUTED = {"batch_norm_reference": REFERENCE_BODY, "recalibrate": RECALIBRATE_BODY}


def function_body(text, name):
    """(first, last) 0-based lines of the top-level function's body after its docstring."""
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None),
                                                           ast.Constant):
                body = body[1:]
            return body[0].lineno - 1, node.end_lineno - 1
    raise ValueError(f"batchnorm.py has no function {name}")


def reroute(text):
    """text with REROUTED's functions' bodies replaced (signatures and docstrings kept)."""
    lines = text.splitlines()
    spans = sorted(((function_body(text, name), body) for name, body in REROUTED.items()),
                   reverse=True)
    for (first, last), body in spans:
        lines[first:last + 1] = body.rstrip("\n").splitlines()
    return "\n".join(lines) + "\n"


def code(line):
    return line.split("#", 1)[0].strip()


def solution_lines(text, elsewhere=()):
    """The lines of code only the solution has: its blocks' and its rerouted functions' lines,
    without comments, less those the copy has anyway (the rest of batchnorm.py, the rerouted
    bodies, `elsewhere`: the other files' texts) and short ones (`else:`, `return y`)."""
    lines = text.splitlines()
    spans = [(first, last) for first, last, *_ in blocks(text)]
    spans += [function_body(text, name) for name in REROUTED]
    inside = {i for first, last in spans for i in range(first, last + 1)}
    given = {code(line) for i, line in enumerate(lines) if i not in inside}
    given |= {code(line) for body in REROUTED.values() for line in body.splitlines()}
    given |= {code(line) for other in elsewhere for line in other.splitlines()}
    return sorted({code(lines[i]) for i in inside if len(code(lines[i])) >= 16} - given,
                  key=lambda line: -len(line))


def student_batchnorm(text):
    return reroute(stub(text))

# ----------------------------------------------------------------------------- the other files

REQUIRE = ("    checks.require_exercises(norm)   # the student's copy: the exercises the layer "
           "runs on\n")
CONFTEST = '''

# ----------------------------------------------------------------------------- the student's copy
# Added by exercises.py. A test that fails while an exercise of batchnorm.py is not done yet
# skips, saying which exercise it waits for; test_batchnorm.py's test_exercise fails instead,
# with grade.py's line.
import re as _re

import checks as _checks

_WAITS = _re.compile(r"NotImplementedError: exercise (\\d)"
                     r"|exercise (\\d) \\(.*?\\) is not done yet")


def pytest_runtest_setup(item):
    """The tests that clone the repository need its git history, which the copy has not."""
    if "clone" in getattr(item, "fixturenames", ()) and not (REPO / ".git").exists():
        pytest.skip("needs a git repository, and the student's copy has no history: git init, "
                    "git add -A and git commit make one")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or getattr(item, "originalname", item.name) == "test_exercise":
        return
    named = _WAITS.search(report.longreprtext or "")
    if named:
        waits = int(named.group(1) or named.group(2))
    else:
        import batchnorm
        missing = _checks.first_not_done(batchnorm, tuple(_checks.EXERCISES))
        if missing is None:
            return
        waits = missing[0]
    report.outcome = "skipped"
    report.longrepr = (str(item.path), item.location[1] or 0,
                       f"Skipped: waits for exercise {waits} ({_checks.EXERCISES[waits]})")
'''

# (file, what is there, what the copy has instead, why)
REWRITES = [
    ("norms.py", "import torch\nfrom torch import nn\n",
     "import torch\nfrom torch import nn\n\nimport checks\n",
     "norm_layers checks the exercises"),
    ("norms.py", "    return [] if build is None else [build(num_features, rank, groups)]\n",
     "    layers = [] if build is None else [build(num_features, rank, groups)]\n" + REQUIRE
     + "    return layers\n",
     "a model with BN waits for the exercises it runs on"),
    ("studies/batch.py",
     "            x_hat = (x - x.mean(dim=0)) / torch.sqrt(x.var(dim=0, unbiased=False)\n"
     "                                                     + self.first_bn.eps)\n",
     "            unit = x.new_ones(x.shape[1])   # x_hat by your BatchNormFunction (exercise 1)\n"
     "            x_hat = batchnorm.BatchNormFunction.apply(x.detach(), unit, unit * 0,\n"
     "                                                      self.first_bn.eps)[0]\n",
     "x_hat by hand is exercise 1"),
    ("test_normalizations.py",
     "    mu = x.mean(dim=dims, keepdim=True)\n"
     "    std = torch.sqrt(((x - mu) ** 2).mean(dim=dims, keepdim=True) + eps)\n",
     "    var, mu = torch.var_mean(x, dim=dims, correction=0, keepdim=True)   # torch's\n"
     "    std = torch.sqrt(var + eps)\n",
     "the statistics by hand are exercise 1"),
    ("norms.py",
     "        if not self.training:\n            return self._normalize_with_running_stats(x)\n\n"
     "        stat_shape, _ = stat_shape_and_dims(x)\n        r_max, d_max = self.limits()\n",
     "        if not self.training:   # evaluation as BN's (your exercise 4)\n"
     "            return super().forward(x)\n\n"
     "        stat_shape, _ = stat_shape_and_dims(x)\n        r_max, d_max = self.limits()\n",
     "BN's switch between training and evaluation is exercise 4"),
    ("norms.py",
     "        self.update_running_estimates(batch_mean, batch_var, x.numel() // x.shape[1])\n"
     "        renormed",
     "        with torch.no_grad():   # the running estimates as BN's training step updates them\n"
     "            super().forward(x)   # (your exercise 4)\n"
     "        renormed",
     "the update of the running estimates in BN's forward is exercise 4"),
]


def rewrite(files):
    """files {path: text} with REWRITES applied, each found exactly once."""
    for path, old, new, why in REWRITES:
        count = files[path].count(old)
        if count != 1:
            raise ValueError(f"exercises.py: {path} has {count} copies of the text it replaces "
                             f"({why}); update REWRITES to the file as it is now")
        files[path] = files[path].replace(old, new)
    files["conftest.py"] += CONFTEST
    return files

# ----------------------------------------------------------------------------- make

def tracked_files(repo):
    """The files git tracks in repo (as they are in the working tree), symlinks left out."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True)
    if listed.returncode != 0:
        raise SystemExit(f"error: {repo} is not a git checkout: make copies the files git tracks")
    paths = [p for p in listed.stdout.decode().split("\0") if p]
    return [p for p in paths if (repo / p).is_file() and not (repo / p).is_symlink()]


def traces(directory, solution, elsewhere=()):
    """[(file, line)] of solution lines found in the files of directory."""
    found = []
    wanted = solution_lines(solution, elsewhere)
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        squeezed = "\n".join(code(line) for line in text.splitlines())
        found += [(str(path.relative_to(directory)), line) for line in wanted
                  if line in squeezed]
    return found


def make(directory, repo=HERE):
    """Write the student's copy of repo into directory; return the number of files written."""
    directory = Path(directory).resolve()
    if directory == repo or repo in directory.parents:
        raise SystemExit(f"error: {directory} is inside the repository; choose a folder outside")
    if directory.exists() and any(directory.iterdir()):
        raise SystemExit(f"error: {directory} is not empty; give a new or empty folder")
    solution = (repo / "batchnorm.py").read_text()
    if not blocks(solution) or all(body.strip().startswith('raise NotImplementedError("exercise')
                                   for body in block_texts(solution)):
        raise SystemExit("error: batchnorm.py here has no solution in its exercise blocks: this "
                         "is a student's copy already")
    paths = [p for p in tracked_files(repo) if p not in TEACHER_ONLY]
    texts = {}
    for path in ("batchnorm.py", "conftest.py", *{p for p, *_ in REWRITES}):
        texts[path] = (repo / path).read_text()
    texts["batchnorm.py"] = student_batchnorm(texts["batchnorm.py"])
    try:
        texts = rewrite(texts)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    directory.mkdir(parents=True, exist_ok=True)
    for path in paths:
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path in texts:
            target.write_text(texts[path])
            shutil.copymode(repo / path, target)
        else:
            shutil.copy2(repo / path, target)
    for path in (p for p in paths if p.endswith(".py")):
        compile((directory / path).read_text(), path, "exec")   # a rewrite that broke a file
    others = [(repo / p).read_text() for p in paths if p != "batchnorm.py" and p.endswith(".py")]
    left = traces(directory, solution, others)
    if left:
        file, line = left[0]
        raise SystemExit(f"error: the solution's line `{line}` is in {file} of the copy "
                         f"({len(left)} such lines); the copy in {directory} gives it away")
    return len(paths)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="exercises.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make_parser = commands.add_parser("make", help="write the student's copy into DIR")
    make_parser.add_argument("directory", metavar="DIR")
    args = parser.parse_args(argv)
    count = make(args.directory)
    print(f"the student's copy: {count} files in {args.directory}; batchnorm.py has "
          f"{len(blocks((HERE / 'batchnorm.py').read_text()))} blocks in 5 exercises. There, "
          "`python grade.py` grades them and `pytest` checks the rest.")


if __name__ == "__main__":
    sys.exit(main())
