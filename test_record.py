"""The record changes only when asked: the everyday commands (a training, plot.py, a study) leave
a clone of the repository exactly as committed, since what they write goes under runs/, which git
ignores. Only reproduce.py and an explicit --figures/--out (or experiments.py's --redraw and
--tables) write the committed figures/ and results/."""
import shutil
import subprocess
import sys

import pytest


def git(cwd, *args):
    """`git <args>` in `cwd`; its output."""
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def working_tree_changes(repo):
    """(files changed or new in repo's working tree, files deleted there), as paths in it."""
    changed = git(repo, "ls-files", "--modified", "--others", "--exclude-standard", "-z")
    deleted = git(repo, "ls-files", "--deleted", "-z")
    return ({name for name in changed.split("\0") if name} - set(deleted.split("\0")),
            {name for name in deleted.split("\0") if name})


@pytest.fixture
def clone(tmp_path, repo):
    """A `git clone` of the repository with the working tree's uncommitted changes committed on
    top in the clone: the code under test, as a clean checkout that `git status` can judge."""
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    changed, deleted = working_tree_changes(repo)
    for name in changed:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, clone / name)
    for name in deleted:
        (clone / name).unlink(missing_ok=True)
    git(clone, "add", "--all")
    git(clone, "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-q",
        "--allow-empty", "-m", "the working tree under test")
    assert git(clone, "status", "--porcelain") == ""
    return clone


def test_a_training_plot_py_and_a_study_leave_the_record_unchanged(clone, tiny_mnist):
    data = ["--data-dir", str(tiny_mnist)]
    for command in (["mlp.py", "--epochs", "1", "--disp-freq", "1", "--device", "cpu", *data],
                    ["plot.py", *data],
                    ["experiments.py", "lr", "--quick", "--device", "cpu", *data]):
        result = subprocess.run([sys.executable, *command], cwd=clone, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr}"
    # no committed file changed, no new file outside what git ignores ...
    assert git(clone, "status", "--porcelain", "--untracked-files=all") == ""
    # ... since each wrote its output under runs/
    for written in ("mlp/history.json", "figures/table.md", "figures/mlp_train.png",
                    "experiments/lr.json"):
        assert (clone / "runs" / written).exists(), written
