"""The model scripts of this repository, in one place, and how a duration is written.

plot.py, bench.py, reproduce.py and the tests read these instead of each other. It sits above
the scripts: it imports a model script (and so solver.py) when asked for one, and nothing below
it imports registry, so there is no import circle.
"""
import importlib

MODEL_NAMES = ("mlp", "cnn", "resnet")   # `python <name>.py` trains the model <name>


def model_script(name):
    """The module of `python <name>.py`: its build_model(norm) and config."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return importlib.import_module(name)


def format_time(seconds):
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
