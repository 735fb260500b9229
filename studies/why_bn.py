"""What the three studies of "why BN helps, the 2018 answer" share (Santurkar, Tsipras, Ilyas,
Madry 2018, arXiv:1805.11604; studies/noisy.py, ics.py, smoothness.py): the two networks, the
training length, the steps at which a study measures, and a curve over training drawn as its
mean and range over the ok seeds, each failed or diverged run on its own (figure1, placement
and population draw their curves with it too)."""
import math

from torch import nn

import cnn
import mlp
from studies.common import (compare, draw_over_seeds, first_images, ok_values, seeds_cell,
                            show_seeds)

NETWORKS = {"mlp": mlp.build_model, "cnn": cnn.build_model}   # build(norm), the report's two


def schedule(study):
    """study.config overrides: the report's recipe (study.config) for 3 epochs, measured every
    100 steps (disp_freq is also the measuring period); --quick: one pass over training_data's
    100 images in batches of 10, measured every 3 steps (it only shows that the code runs)."""
    if study.quick:
        return dict(max_epoch=1, batch_size=10, disp_freq=3)
    return dict(max_epoch=3, disp_freq=100)


def training_data(study):
    """What the studies train and test on: study.data, or in --quick its first 100 training
    and 100 test images."""
    return first_images(study.data, 100, 100) if study.quick else study.data


def measured(step, every):
    """Whether a study measures at training step `step` (counted from 1, as solver.py counts
    iterations): steps 1, every, 2 * every, ..."""
    return step == 1 or step % every == 0


def finite(value):
    """A float for the JSON: None where it is not finite (json would write a bare NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def start_and_later(per_seed):
    """A measure over training, per seed: (its value at step 1, its median over the later
    measurements). Kept apart because at step 1 the untrained networks differ most."""
    def median(values):
        values = sorted(v for v in values if v is not None and math.isfinite(v))
        return values[len(values) // 2] if values else None
    return ([v[0] if v else None for v in per_seed], [median(v[1:]) for v in per_seed])


def against(a, b, outcomes_a, outcomes_b, spec=".3g", decimals=3):
    """Three table cells: a's and b's seeds (common.seeds_cell: the ok seeds' mean and range,
    the others counted) and the effect rule's verdict on b - a (common.compare). An accuracy
    (spec a percentage) is compared in points, any other measure in its own unit."""
    scale = dict(scale=100, decimals=2) if spec.endswith("%") else dict(
        scale=1, decimals=decimals, unit="")
    return (seeds_cell(a, outcomes_a, spec), seeds_cell(b, outcomes_b, spec),
            compare(a, b, outcomes_a, outcomes_b, **scale)[1])


def tallied(name, outcomes):
    """A row's name with its seeds' outcomes where some are not ok: "with BN (3 of 5 ok, 2
    failed)"; its cells then show ok_only."""
    ok = outcomes.count("ok")
    if ok == len(outcomes):
        return name
    kinds = ", ".join(f"{outcomes.count(k)} {k}" for k in ("failed", "diverged") if k in outcomes)
    return f"{name} ({ok} of {len(outcomes)} ok, {kinds})"


def ok_only(values, outcomes, spec=".3g"):
    """Mean (range) over the ok seeds alone, for a row whose name counts them (tallied)."""
    return show_seeds(ok_values(values, outcomes), spec)


def weighted_layers(model):
    """The layers with weights (nn.Linear, nn.Conv2d), in the order the input meets them."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def layer_name(layer):
    if isinstance(layer, nn.Conv2d):
        return f"conv {layer.in_channels}->{layer.out_channels}"
    return f"linear {layer.in_features}->{layer.out_features}"


def draw_band(ax, steps, per_seed, color, label, style="-", outcomes=None):
    """A curve over training: per_seed[s][k] is seed s's value at steps[s][k]. The mean over
    the ok seeds that have a finite value at a step as a line, their range as a band
    (common.draw_over_seeds, one step per x). A failed or diverged run (outcomes[s]; None:
    every run ok) is never averaged in: it is drawn on its own, a thin dotted line ending in
    its marker (v failed, x diverged) at its last finite value, and the legend says how many
    runs the mean is over. Returns the number of ok runs."""
    outcomes = outcomes or ["ok"] * len(per_seed)
    ok = sum(o == "ok" for o in outcomes)
    by_step = {}
    for seed_steps, values, verdict in zip(steps, per_seed, outcomes):
        if verdict != "ok":
            continue
        for step, value in zip(seed_steps, values):
            if value is not None and math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    xs = sorted(by_step)
    mean_label = label if ok == len(outcomes) else f"{label}: mean of {ok} of {len(outcomes)} ok"
    draw_over_seeds(ax, xs, [by_step[x] for x in xs], [["ok"] * len(by_step[x]) for x in xs],
                    color, mean_label, fmt=style)
    marked = set()
    for seed_steps, values, verdict in zip(steps, per_seed, outcomes):
        points = [(x, v) for x, v in zip(seed_steps, values)
                  if verdict != "ok" and v is not None and math.isfinite(v)]
        if not points:
            continue
        ax.plot(*zip(*points), ":", color=color, lw=0.9, alpha=0.8)
        ax.plot(*points[-1], "v" if verdict == "failed" else "x", color=color, ms=7,
                label=None if verdict in marked else f"{label}: a {verdict} run")
        marked.add(verdict)
    return ok
