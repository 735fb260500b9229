"""The runs this repository makes, in one place: which script trains each model, the folder a
run is saved in, what its history.json holds, and how a duration is written.

plot.py, bench.py, reproduce.py and experiments.py read these instead of each other. Only the
standard library is imported here: the model scripts and solver.py (which names its default
--out from here) are imported when asked for, so nothing depends on matplotlib.
"""
import importlib
from pathlib import Path

MODEL_NAMES = ("mlp", "cnn", "resnet")   # `python <name>.py` trains the model <name>


def model_script(name):
    """The module of `python <name>.py`: its build_model(norm) and config."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return importlib.import_module(name)


def run_label(model, norm):
    """mlp, mlp_bn, cnn_ln, ...: a run's name in folders, figures and tables."""
    return model if norm == "none" else f"{model}_{norm}"


def run_folder(model, norm, root="runs"):
    """Where `python <model>.py --norm <norm>` saves by default: runs/cnn, runs/cnn_bn, ..."""
    return Path(root) / run_label(model, norm)


def history_keys():
    """Every key of history.json, as solver.new_history writes them."""
    import solver
    return tuple(solver.new_history("mlp", "none", 0, {}, "cpu"))


def norm_of(record):
    """A history's or checkpoint's normalization; one written before `norm` existed has `bn`."""
    if "norm" in record:
        return record["norm"]
    return "bn" if record.get("bn") else "none"


def upgraded(history):
    """A history.json as written today, from one written before `norm` and `threads` existed
    (its `norm` taken from `bn`; its thread count unknown, None). A current one is unchanged."""
    norm = norm_of(history)
    history = {"norm": norm, "threads": None, **history}
    if isinstance(history.get("config"), dict) and "norm" not in history["config"]:
        history["config"] = dict(history["config"], norm=norm)
    return history


def format_time(seconds):
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
