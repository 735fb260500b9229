"""What every study shares: the form of a study page (studies/runner.py runs it), the data, the
seeds, training through solver.py's loop, the one failure rule (`outcome`), the small tables,
drawing a mean over seeds with their range in the repository's one figure style (plot.py's:
two panels across at most, the failed and diverged runs counted in a strip under a panel),
and leaving a model as it was.

A study page (studies/<page>.py) is a module with:

    NAME                          the study's name on the command line (`experiments.py NAME`)
    QUESTION                      what it asks, in one line (experiments.py's --help lists it)
    FIGURES                       the files it draws into --figures, in draw()'s order
    trainings(study) -> [job]     its trainings, each one independent of the others: a dict of
                                  JSON values naming its setting, arm and seed
    train_one(study, job) -> dict one training and its measurements, as JSON values
    assemble(study, jobs, results) -> dict
                                  the study's JSON from every job and its result (in order);
                                  `run_study` adds the provenance
    table(results) -> str         its Markdown table(s), from that JSON
    draw(results) -> [Figure]     its figures, from that JSON, in FIGURES' order

studies/runner.py's `run_study(page, study)` runs the jobs (in worker processes with --jobs),
saves <out>/<NAME>.json, prints the table and draws the figures; `--redraw` calls draw() alone.
Nothing passes from one job to another but the data: each job seeds its own randomness.
"""
import contextlib
import math
import time

import matplotlib.pyplot as plt
from matplotlib.ticker import Formatter
import torch

import mlp
import plot   # the figure style: headless backend, DPI, a colour and a label per normalization
import plumbing
import solver

FAILED_BELOW = 0.20   # outcome(): a test accuracy below this is a failed run (chance: 0.10)


# ----------------------------------------------------------------------------- the failure rule

@torch.no_grad()
def outcome(model, images, labels, train_loss):
    """The one failure rule of every study: (label, test accuracy) of a trained model.

    "diverged": the last training loss is not finite (accuracy None: the weights are nan);
    "failed": finite, but test accuracy below 20%, or at most two classes predicted on the test
    set (a network that answers "1" for every digit scores 11.35% and has learnt nothing);
    "ok": otherwise. Evaluated in eval mode; the model is put back into training mode.
    """
    if not math.isfinite(train_loss):
        return "diverged", None
    model.eval()
    predicted = torch.cat([model(batch).argmax(dim=1)
                           for batch in images.split(solver.EVAL_BATCH_SIZE)])
    model.train()
    acc = (predicted == labels).float().mean().item()
    failed = acc < FAILED_BELOW or predicted.unique().numel() <= 2
    return ("failed" if failed else "ok"), acc


def norm_of(bn):
    """The --norm name of a network with (bn=True) or without BN."""
    return "bn" if bn else "none"


def color(bn):
    """The figure colour of the network with (bn=True) or without BN, as in plot.py's figures."""
    return plot.NORM_COLORS[norm_of(bn)]


def label(bn):
    """"with BN" or "without BN", as plot.py's figures say it."""
    return plot.NORM_LABELS[norm_of(bn)]


class Study:
    """What every study shares: the data, the device, the seed, where results go, the clock."""

    def __init__(self, args, data):
        self.args, self.data, self.quick = args, data, args.quick
        self.device, self.seed = data[0].device, args.seed
        # --seeds N: seeds --seed .. --seed + N - 1 (the studies written before seeds use --seed)
        self.seeds = [args.seed + i for i in range(args.seeds)]
        self.start = time.perf_counter()

    def config(self, **overrides):
        """mlp.py's config with the report's plain recipe: constant rate, no warm-up, no shifts."""
        plain = dict(lr_schedule="constant", warmup_epochs=0, augment_shift=0, max_epoch=1,
                     seed=self.seed)
        return {**mlp.config, **plain, **overrides}

    def model(self, build, seed=None):
        """build() under the seed (default --seed), on the device: the same initial weights
        every time."""
        torch.manual_seed(self.seed if seed is None else seed)
        return build().to(self.device)

    def fit(self, model, config, on_window=None, on_step=None, on_epoch=None, data=None,
            seed=None):
        """Train the model with solver.train, watched through its callbacks (on_step,
        on_window, on_epoch: see solver.train_one_epoch); returns (history, diverged): diverged
        is True where a non-finite loss stopped it. The batch order comes from `seed` (default
        --seed). `train` below adds the verdict of the failure rule."""
        optimizer = solver.make_optimizer(model, config)
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        history = solver.new_history("experiment", config.get("norm"), 0, config, self.device)
        try:
            solver.train(model, optimizer, data or self.data, config, generator, history,
                         on_window=on_window, on_step=on_step, on_epoch=on_epoch)
        except plumbing.Diverged:
            return history, True
        return history, False

    def train(self, model, config, seed, on_window=None, on_step=None, data=None):
        """Train the model with solver.train under the studies' one failure rule; returns
        (history, outcome label, final test accuracy or None). `seed` orders the batches."""
        history, diverged = self.fit(model, config, on_window=on_window, on_step=on_step,
                                     data=data, seed=seed)
        last_loss = math.nan if diverged else history["train"]["loss"][-1]
        test_x, test_y = (data or self.data)[2:]
        label, acc = outcome(model, test_x, test_y, last_loss)
        return history, label, acc


# ----------------------------------------------------------------------------- models

@contextlib.contextmanager
def preserved(model):
    """Inside the block, measure freely: afterwards the model is exactly as it was, its
    parameters, buffers (BN's running estimates and counters) and each module's mode."""
    saved = [(t, t.detach().clone()) for t in [*model.parameters(), *model.buffers()]]
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for tensor, copy in saved:
                tensor.copy_(copy)
        for module, training in modes:
            module.training = training


@torch.no_grad()
def module_input(model, module, images):
    """The input `module` gets when the model is run on `images` in its current mode; the
    model, BN's running estimates included, is left as it was."""
    seen = {}
    hook = module.register_forward_pre_hook(lambda m, inputs: seen.update(x=inputs[0]))
    try:
        with preserved(model):
            model(images)
    finally:
        hook.remove()
    return seen["x"]


def mlp_with(bn):
    return lambda: mlp.build_model(norm_of(bn))


def first_images(data, n_train, n_test):
    """(train_x, train_y, test_x, test_y) cut to the first n_train training and n_test test
    images: a quick mode's smaller run."""
    train_x, train_y, test_x, test_y = data
    return train_x[:n_train], train_y[:n_train], test_x[:n_test], test_y[:n_test]


def mean_and_range(values):
    """(mean, min, max) of a setting's numbers over seeds; None where none is finite."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return sum(finite) / len(finite), min(finite), max(finite)


def ok_values(values, outcomes=None):
    """The values of the seeds whose outcome is "ok" (all finite values without outcomes)."""
    outcomes = outcomes or ["ok"] * len(values)
    return [v for v, o in zip(values, outcomes)
            if o == "ok" and v is not None and math.isfinite(v)]


def show_seeds(values, spec=".2%", outcomes=None):
    """"97.12% (96.90-97.30)": the mean over seeds with their range, for tables, each number
    in the format `spec` (".3g": "0.113 (0.107-0.118)"); "-" where none is finite. With
    `outcomes`, over the ok seeds only, saying how many they are where some are not:
    "97.12% (96.90-97.30), 3 of 5 ok"."""
    kept = ok_values(values, outcomes)
    summary = mean_and_range(kept)
    if summary is None:
        return "-" if outcomes is None else f"-, 0 of {len(values)} ok"
    mean, low, high = summary
    text = f"{mean:{spec}}" if len(kept) == 1 else f"{mean:{spec}} ({low:{spec}}-{high:{spec}})"
    if outcomes is not None and len(kept) < len(values):
        text += f", {len(kept)} of {len(values)} ok"
    return text


# ----------------------------------------------------------------------------- the effect rule

SEEDS_FOR_AN_EFFECT = 5


def compare(a, b, outcomes_a=None, outcomes_b=None, scale=100, decimals=2, unit=" points"):
    """The one rule by which a study claims that b differs from a (lists over the same seeds;
    failed and diverged seeds left out by their outcomes). (is_effect, text):

    an effect      both sides have SEEDS_FOR_AN_EFFECT ok seeds or more, and either their
                   ranges are apart, or the paired difference b - a has one sign on every seed:
                   "effect: +0.12 to +0.50 on all 5 seeds" / "effect: ranges apart, +0.80"
    otherwise      "no difference larger than 0.35 points": the largest |b - a| of the seeds'
                   pairs (of the means where none pair up), times `scale`, rounded up at
                   `decimals`; "not compared: 3 of 5 ok" where a side has fewer ok seeds.
    """
    outcomes_a = outcomes_a or ["ok"] * len(a)
    outcomes_b = outcomes_b or ["ok"] * len(b)
    ok_a, ok_b = ok_values(a, outcomes_a), ok_values(b, outcomes_b)
    pairs = [(y - x) * scale for x, y, ox, oy in zip(a, b, outcomes_a, outcomes_b)
             if ox == oy == "ok" and None not in (x, y)]
    show = lambda d: f"{d:+.{decimals}f}"
    fewest = min(len(ok_a), len(ok_b))
    if fewest < SEEDS_FOR_AN_EFFECT:
        seeds = len(a) if len(ok_a) == fewest else len(b)
        return False, f"not compared: {fewest} of {seeds} ok"
    if max(ok_a) < min(ok_b) or max(ok_b) < min(ok_a):
        mean_gap = (sum(ok_b) / len(ok_b) - sum(ok_a) / len(ok_a)) * scale
        return True, f"effect: ranges apart, {show(mean_gap)}{unit}"
    if len(pairs) >= SEEDS_FOR_AN_EFFECT and (min(pairs) > 0 or max(pairs) < 0):
        low, high = sorted((min(pairs), max(pairs)), key=abs)
        return True, f"effect: {show(low)} to {show(high)}{unit} on all {len(pairs)} seeds"
    largest = (max(map(abs, pairs)) if pairs
               else abs(sum(ok_b) / len(ok_b) - sum(ok_a) / len(ok_a)) * scale)
    bound = math.ceil(round(largest * 10 ** decimals, 6)) / 10 ** decimals
    return False, f"no difference larger than {bound:.{decimals}f}{unit}"


FAILURE_MARKS = (("failed", "v"), ("diverged", "x"))   # the marker of each kind, everywhere
STRIP_ROW = 0.22   # inches per row of a failure strip (draw_failures)


def draw_over_seeds(ax, x, per_seed, outcomes, color, label, fmt="o-", failures="strip"):
    """One setting per x: the mean over seeds of the ok runs as a line, the seeds' range as a
    band. Failed and diverged runs are never averaged into the line, nor joined into it:
    with failures="strip" they are left to the caller's failure strip (draw_failures: each
    counted at its own x, under the panel); with failures="values" each is a marker (v
    failed, x diverged) at its own value where this is finite (a measure of the run, not its
    accuracy). per_seed[i] and outcomes[i]: lists over seeds at x[i]."""
    points = [(xi, [v for v, o in zip(vals, outs) if o == "ok" and v is not None])
              for xi, vals, outs in zip(x, per_seed, outcomes)]
    points = [(xi, vals) for xi, vals in points if vals]
    if points:
        xs = [xi for xi, _ in points]
        ax.plot(xs, [sum(v) / len(v) for _, v in points], fmt, color=color, label=label)
        ax.fill_between(xs, [min(v) for _, v in points], [max(v) for _, v in points],
                        color=color, alpha=0.2, lw=0)
    if failures != "values":
        return
    for kind, mark in FAILURE_MARKS:
        marks = [(xi, v) for xi, vals, outs in zip(x, per_seed, outcomes)
                 for v, o in zip(vals, outs)
                 if o == kind and v is not None and math.isfinite(v)]
        if marks:
            ax.scatter([m[0] for m in marks], [m[1] for m in marks], marker=mark, s=50,
                       color=color, zorder=3, label=f"{label}: a {kind} run")


def strip_note(seeds):
    """What a figure with failure strips says of them (seeds: how many per setting)."""
    return (f"line: mean over the ok seeds, band: their range; under it, how many of the "
            f"{seeds} seeds failed or diverged")


class Percent(Formatter):
    """Fractions written as percentages with as few decimals as the ticks need: 0.97 as 97%,
    0.9625 as 96.25% (and then 96.00% beside it)."""

    ticks = ()

    def set_locs(self, locs):
        self.ticks = list(locs)

    def __call__(self, x, pos=None):
        decimals = next((d for d in range(4) if all(
            abs(round(100 * t, d) - 100 * t) < 1e-6 for t in self.ticks or [x])), 4)
        return f"{100 * x:.{decimals}f}%"


def percent_axis(ax, axis="y"):
    """An accuracy axis (fractions) labelled in percent: 0.97 written 97%."""
    getattr(ax, f"{axis}axis").set_major_formatter(Percent())


def failure_rows(series):
    """The rows of a failure strip: per series (name, color, x, outcomes; outcomes[i] the list
    over seeds at x[i]) and kind (failed, diverged) that has runs of that kind, (row label,
    color, marker, {x: how many runs})."""
    rows = []
    for name, color, xs, outcomes in series:
        for kind, mark in FAILURE_MARKS:
            counts = {xi: outs.count(kind) for xi, outs in zip(xs, outcomes) if kind in outs}
            if counts:
                rows.append((f"{name}, {kind}", color, mark, counts))
    return rows


def draw_failures(strip, series):
    """The failed and diverged runs of a panel, in a strip of their own under it (sharing its
    x): one row per series and kind that has any (failure_rows), and at each x where there
    are some, their number, centred on that exact x. Returns the number of rows."""
    rows = failure_rows(series)
    for k, (_, color, _, counts) in enumerate(rows):
        for xi, n in counts.items():
            strip.text(xi, k, str(n), ha="center", va="center", fontsize=9.5,
                       fontweight="bold", color=color, clip_on=False)
        strip.update_datalim([(xi, k) for xi in counts])   # text alone widens no axis
    strip.autoscale_view()
    strip.set_yticks(range(len(rows)), [name for name, *_ in rows], fontsize=9)
    for tick, (_, color, *_) in zip(strip.get_yticklabels(), rows):
        tick.set_color(color)
    strip.set_ylim(max(len(rows), 1) - 0.5, -0.5)   # the first row on top
    if not rows:
        strip.text(0.5, 0.5, "no failed or diverged run", transform=strip.transAxes,
                   ha="center", va="center", fontsize=9, color="gray")
    strip.tick_params(axis="y", length=0)
    strip.grid(axis="x", alpha=0.3)
    return len(rows)


def panel_grid(n, strips=None, cols=2, width=plot.WIDTH, height=3.0, extra=0.7):
    """A figure of n panels, `cols` across (row-major), under matplotlib's constrained layout,
    `height` inches each (`extra`: the inches for the suptitle and a legend under the
    panels). strips[i], where given and not None, is the number of rows of panel i's failure
    strip (failure_rows): the strip goes beneath the panel, sharing its x, the panel's own
    tick labels left to it. Returns (fig, [(ax, strip or None)])."""
    heights = grid_heights(n, strips, cols, height)
    fig = plt.figure(figsize=(width, sum(heights) + extra), layout="constrained")
    return fig, add_panels(fig, n, strips, cols, height)


def grid_heights(n, strips=None, cols=2, height=3.0):
    """The height in inches of each row of panel_grid's panels, their strips included."""
    rows = math.ceil(n / cols)
    strips = list(strips or []) + [None] * n
    heights = []
    for r in range(rows):
        counts = [k for k in strips[r * cols:min(n, (r + 1) * cols)] if k is not None]
        heights.append(height + (STRIP_ROW * max([1, *counts]) + 0.15 if counts else 0))
    return heights


def add_panels(parent, n, strips=None, cols=2, height=3.0):
    """panel_grid's panels in `parent`, a figure or a subfigure of one (fig.subfigures)."""
    heights = grid_heights(n, strips, cols, height)
    strips = list(strips or []) + [None] * n
    grid = parent.add_gridspec(len(heights), cols, height_ratios=heights)
    panels = []
    for i in range(n):
        cell, row_height = grid[i // cols, i % cols], heights[i // cols]
        if strips[i] is None:
            panels.append((parent.add_subplot(cell), None))
            continue
        inner = cell.subgridspec(2, 1, height_ratios=[height, row_height - height], hspace=0)
        ax = parent.add_subplot(inner[0])
        strip = parent.add_subplot(inner[1], sharex=ax)
        ax.tick_params(labelbottom=False)
        panels.append((ax, strip))
    return panels


def figure_legend(fig, axes, ncols=2):
    """One legend for the whole figure (or subfigure), under its panels: every labelled line
    of `axes`, each label once."""
    seen = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(text, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=ncols)


def markdown_table(header, rows):
    """A Markdown table: a header row, then one row per item of `rows`."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- sweeps (lr, init)

ARMS = ("no_bn", "bn")   # a job's "arm" in the sweeps: without BN, with BN


def sweep_trainings(study, key, values, **fixed):
    """The jobs of a sweep (lr, init): every value at every seed, without BN, then with BN."""
    return [{**fixed, "arm": arm, key: value, "seed": seed}
            for arm in ARMS for value in values for seed in study.seeds]


def sweep_train_one(study, job, make, measure=None):
    """One job of a sweep: make(bn, job) -> (build, config), trained under the failure rule;
    {"outcome", "test_acc"} (None where the loss diverged) and, if measure(model) is given,
    "measured": its result on the trained model (None where the loss diverged)."""
    build, config = make(job["arm"] == "bn", job)
    model = study.model(build, job["seed"])
    _, verdict, acc = study.train(model, config, job["seed"])
    result = {"outcome": verdict, "test_acc": acc}
    if measure:
        result["measured"] = None if verdict == "diverged" else measure(model)
    return result


def sweep_assemble(jobs, results, key, **fixed):
    """{"no_bn": [...], "bn": [...]} of the jobs whose settings include `fixed`: per value
    {key: value, "outcome": [...], "test_acc": [...] (and "measured")}, lists in seed order."""
    assembled = {arm: {} for arm in ARMS}
    for job, result in zip(jobs, results):
        if any(job.get(k) != v for k, v in fixed.items()):
            continue
        point = assembled[job["arm"]].setdefault(job[key], {key: job[key]})
        for name, value in result.items():
            point.setdefault(name, []).append(value)
    return {arm: list(points.values()) for arm, points in assembled.items()}


SWEEP_NAMES = {"no_bn": "no BN", "bn": "BN"}   # a sweep arm's name in its failure strip


def sweep_failures(results, key):
    """The failure strip's series of a sweep: (name, color, x, outcomes) per arm."""
    return [(SWEEP_NAMES[arm], color(arm == "bn"), [p[key] for p in results[arm]],
             [p["outcome"] for p in results[arm]]) for arm in ARMS]


def draw_sweep(ax, strip, results, key, xlabel, ylabel, title, value="test_acc"):
    """Accuracy (in percent) against the swept value on a log axis, mean over the ok seeds
    with their range; the failed and diverged runs in the strip under it, counted at their
    own value (draw_failures)."""
    for bn in (False, True):
        points = results["bn" if bn else "no_bn"]
        draw_over_seeds(ax, [p[key] for p in points], [p[value] for p in points],
                        [p["outcome"] for p in points], color(bn), label(bn))
    draw_failures(strip, sweep_failures(results, key))
    ax.set(xscale="log", ylabel=ylabel, title=title, ylim=(0, 1.02))
    percent_axis(ax)
    strip.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def seeds_cell(values, outcomes, spec=".2%"):
    """A table cell of one setting's seeds: show_seeds over the ok seeds, and the others
    counted by kind beside it: "97.12% (96.90-97.30), 3 of 5 ok, 2 diverged"; "5 failed"
    where no seed is ok (their numbers are in no mean)."""
    others = {}
    for verdict in outcomes:
        if verdict != "ok":
            others[verdict] = others.get(verdict, 0) + 1
    tally = ", ".join(f"{n} {verdict}" for verdict, n in sorted(others.items()))
    if sum(others.values()) == len(outcomes):
        return tally or "-"
    text = show_seeds(values, spec, outcomes)
    return f"{text}, {tally}" if tally else text


def sweep_table(results, key, value="test_acc"):
    """A sweep's Markdown table: per value, each arm's mean (range) over its ok seeds with the
    others counted, and the effect rule's verdict on with BN against without (compare)."""
    return markdown_table(
        [key, "without BN", "with BN", "with BN - without BN"],
        [(f"{a[key]:g}", seeds_cell(a[value], a["outcome"]), seeds_cell(b[value], b["outcome"]),
          compare(a[value], b[value], a["outcome"], b["outcome"])[1])
         for a, b in zip(results["no_bn"], results["bn"])])
