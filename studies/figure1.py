"""The BN paper's Figure 1 (its section 4.1), redone: a 3 x 100 sigmoid network on binary MNIST,
(a, b) test accuracy over 50,000 steps with and without BN, (c, d, e) the 15th/50th/85th
percentiles of one last-layer sigmoid's input over training, (f) BN's gap in points."""
import copy

import matplotlib.pyplot as plt
from torch import nn

import batchnorm
import plot
import solver
from batchnorm import BatchNorm1d
from studies.common import (add_panels, color, compare, figure_legend, first_images,
                            markdown_table, module_input, outcome, percent_axis)
from studies.why_bn import draw_band, ok_only, tallied

NAME = "figure1"
QUESTION = "the BN paper's Figure 1, its network and its three panels"
FIGURES = ("bn_paper_figure1.png",)
ARMS = {  # name in figure1.json -> (with BN?, initialisation of every weight)
    "bn": (True, "glorot"), "no_bn": (False, "glorot"), "no_bn_small_init": (False, "small")}
TITLES = {"bn": "with BN", "no_bn": "without BN", "no_bn_small_init": "without BN, N(0, 0.01²)"}
UNIT = 0   # the unit of the last hidden layer whose input panels (c)-(e) follow
BATCH = 60
RULE = ("plain SGD, lr 0.1, batch 60, binary input; Glorot uniform weights (the small-init "
        "arm: N(0, 0.01^2)), biases 0; BN evaluated with population statistics from 100 "
        "training batches of 60")


def figure1_network(bn, init="glorot"):
    """The BN paper's section 4.1 network: 784 -> 3 x 100 sigmoid units -> 10, cross-entropy.

    With BN, a batchnorm.py layer normalises each W u before its sigmoid, and the bias is
    dropped (beta takes its place). The paper says only "small random Gaussian values", so:
    init="glorot": Glorot (Xavier) uniform weights, the standard for sigmoid units (it keeps the
    variance of each layer's input, and of the gradient going back, about the same from layer
    to layer while the sigmoid is near its linear middle) and what Santurkar et al. (2018) used;
    init="small": N(0, 0.01^2), the small-initialisation case. Biases start at 0.
    """
    layers, n_in = [nn.Flatten()], 28 * 28
    for _ in range(3):
        layers += [nn.Linear(n_in, 100, bias=not bn), *([BatchNorm1d(100)] if bn else []),
                   nn.Sigmoid()]
        n_in = 100
    network = nn.Sequential(*layers, nn.Linear(100, 10))
    for module in network:
        if isinstance(module, nn.Linear):
            if init == "glorot":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return network


def last_sigmoid_input(model, images):
    """The percentiles of UNIT's input to the last sigmoid, over `images`, with the model in
    the mode it is in (as_at_inference's copies: eval mode)."""
    last_sigmoid = [m for m in model if isinstance(m, nn.Sigmoid)][-1]
    return solver.percentiles(module_input(model, last_sigmoid, images)[:, UNIT])


def as_at_inference(model, batches):
    """A copy of the network in eval mode, as the paper evaluates it: BN with population
    statistics (Algorithm 2, `recalibrate`) from fixed training batches."""
    at_inference = copy.deepcopy(model).eval()
    if batchnorm.batchnorm_layers(at_inference):
        batchnorm.recalibrate(at_inference, batches)
    return at_inference


def binary_data(study):
    """study.data with every pixel 0 or 1: "a 28x28 binary image" (pixel >= 0.5 in [0, 1]);
    quick: its first 300 test images."""
    data = first_images(study.data, None, 300) if study.quick else study.data
    train_x, train_y, test_x, test_y = data
    threshold = (0.5 - solver.MNIST_MEAN) / solver.MNIST_STD
    return ((train_x >= threshold).float(), train_y, (test_x >= threshold).float(), test_y)


def training_config(study):
    """Section 4.1: 50,000 steps of 60 images (quick: 20), in whole epochs covering them; plain
    SGD at the report's rate, 0.1; a test point every 500 steps (quick: 10)."""
    steps, every = (20, 10) if study.quick else (50_000, 500)
    per_epoch = len(study.data[0]) // BATCH
    return study.config(batch_size=BATCH, momentum=0.0, weight_decay=0.0, disp_freq=every,
                        max_epoch=-(-steps // per_epoch))


def trainings(study):
    return [{"arm": name, "seed": seed} for name in ARMS for seed in study.seeds]


def train_one(study, job):
    """One arm at one seed: after every window, the test accuracy and UNIT's percentiles of
    the network as at inference."""
    bn, init = ARMS[job["arm"]]
    data = binary_data(study)
    probe_images = data[2][:1000]
    population_batches = data[0][:6000].split(BATCH)   # 100 fixed training batches
    steps, curve = [], {"test_acc": [], "p15": [], "p50": [], "p85": []}

    def on_window(iteration, model):
        steps.append(iteration)
        at_inference = as_at_inference(model, population_batches)
        curve["test_acc"].append(solver.evaluate(at_inference, data[2], data[3])[1])
        for key, value in last_sigmoid_input(at_inference, probe_images).items():
            curve[key].append(value)

    network = study.model(lambda: figure1_network(bn, init), job["seed"])
    history, label, _ = study.train(network, training_config(study), job["seed"],
                                    on_window=on_window, data=data)
    if label != "diverged":   # the final verdict on the network as at inference
        label, _ = outcome(as_at_inference(network, population_batches), data[2], data[3],
                           history["train"]["loss"][-1])
    return {"outcome": label, "test_acc": curve["test_acc"][-1] if steps else None,
            "step": steps, "curve": curve}


def assemble(study, jobs, results):
    config = training_config(study)
    record = {"rule": RULE, "steps": config["max_epoch"] * (len(study.data[0]) // BATCH),
              "unit": UNIT}
    for name in ARMS:
        runs = [result for job, result in zip(jobs, results) if job["arm"] == name]
        record[name] = {"step": runs[-1]["step"],
                        "test_acc": [run["curve"]["test_acc"] for run in runs],
                        "outcome": [run["outcome"] for run in runs],
                        "final_test_acc": [run["test_acc"] for run in runs],
                        **{p: [run["curve"][p] for run in runs] for p in ("p15", "p50", "p85")}}
    return record


def early(record):
    """The index of the measurement nearest a tenth of the training (step 5,000 of 50,000)."""
    return max(0, round(len(record["step"]) / 10) - 1)


def table(results):
    """Per arm: test accuracy at a tenth of the training and at the end, over the ok seeds
    (the others counted in the arm's name); the effect rule on with BN against the arm at both
    (compare); the first seed's percentiles at the end."""
    bn = results["bn"]
    at = early(bn)
    at_step = lambda record: [curve[at] if len(curve) > at else None
                              for curve in record["test_acc"]]
    rows = []
    for name in ARMS:
        record = results[name]
        if not record["step"]:
            continue
        versus = "" if name == "bn" else " / ".join(
            compare(a, b, record["outcome"], bn["outcome"])[1]
            for a, b in ((at_step(record), at_step(bn)),
                         (record["final_test_acc"], bn["final_test_acc"])))
        rows.append((tallied(TITLES[name], record["outcome"]),
                     ok_only(at_step(record), record["outcome"], ".2%"),
                     ok_only(record["final_test_acc"], record["outcome"], ".2%"), versus,
                     " / ".join(f"{record[p][0][-1]:+.2f}" for p in ("p15", "p50", "p85"))))
    return markdown_table(
        ["network", f"test acc at step {bn['step'][at]:,}", "test acc at the end",
         f"with BN - this: step {bn['step'][at]:,} / end",
         "p15 / p50 / p85 at the end, first seed"], rows)


ZOOM = (0.90, 1.0)   # panel (b)'s accuracy range: the gaps the text discusses are 0.4-2 points


def out_of_view(results, colors, low):
    """Panel (b)'s note of what it cannot show, one (text, colour) per arm: an arm whose mean
    ends below `low`, and the failed or diverged runs (all below 20%)."""
    notes = []
    for name in ARMS:
        record = results[name]
        ok = [acc[-1] for acc, verdict in zip(record["test_acc"], record["outcome"])
              if verdict == "ok" and acc and acc[-1] is not None]
        if ok and sum(ok) / len(ok) < low:
            notes.append((f"{TITLES[name]}: ends at {sum(ok) / len(ok):.1%}", colors[name]))
        bad = sum(verdict != "ok" for verdict in record["outcome"])
        if bad:
            runs = "a failed or diverged run" if bad == 1 else f"{bad} failed or diverged runs"
            notes.append((f"{TITLES[name]}: {runs}", colors[name]))
    return notes


def draw_gap(ax, results):
    """Panel (f): with BN minus without BN (both Glorot), test accuracy in points, per seed
    where both runs are ok (the same seed: the same batches), as a mean and range."""
    bn, no_bn = results["bn"], results["no_bn"]
    pairs = [[None if None in (a, b) else 100 * (a - b) for a, b in zip(with_, without)]
             for with_, without, verdicts in zip(bn["test_acc"], no_bn["test_acc"],
                                                 zip(bn["outcome"], no_bn["outcome"]))
             if verdicts == ("ok", "ok")]
    if pairs:
        draw_band(ax, [bn["step"]] * len(pairs), pairs, color(True),
                  f"with BN - without BN, {len(pairs)} of {len(bn['outcome'])} seeds")
        ax.legend(loc="upper right")
        # the first tenth of training (tens of points) would flatten the rest: off the scale
        steps = bn["step"]
        highs = [max((v for v in values if v is not None), default=0.0)
                 for values in zip(*pairs)]
        lows = [min((v for v in values if v is not None), default=0.0)
                for values in zip(*pairs)]
        later = len(steps) // 10
        top = max(max(highs[later:]), 0) * 1.3 + 0.3
        bottom = min(min(lows[later:]), 0) * 1.3 - 0.3
        if max(highs) > top:
            last_off = max(k for k, high in enumerate(highs) if high > top)
            ax.text(0.98, 0.84, f"off the scale up to step {steps[last_off]:,}: up to "
                    f"{max(highs):.0f} points", transform=ax.transAxes, ha="right", va="top",
                    fontsize=9)
        ax.set_ylim(bottom, top)
    else:
        ax.text(0.5, 0.5, "no seed where both runs are ok", transform=ax.transAxes,
                ha="center", color="gray")
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="training step", ylabel="difference (points)",
           title="(f) with BN minus without BN, test accuracy")


def draw(results):
    """The figure from figure1.json's numbers (`experiments.py figure1 --redraw` calls it too):
    (a) test accuracy of the three arms, (b) the same zoomed in to ZOOM, (c-e) the first
    seed's percentiles, on one y scale, (f) the accuracy gap of BN in points."""
    colors = {"bn": color(True), "no_bn": color(False), "no_bn_small_init": "tab:brown"}
    fig = plt.figure(figsize=(plot.WIDTH, 3.3 + 1.3 + 2 * 3.1), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.3 + 1.3, 2 * 3.1])
    (full, _), (zoom, _) = add_panels(top, 2, height=3.3)
    panels = [ax for ax, _ in add_panels(bottom, 4, height=3.1)]
    for ax in (full, zoom):
        for name in ARMS:   # failed and diverged runs: lines of their own
            record = results[name]
            draw_band(ax, [record["step"]] * len(record["test_acc"]), record["test_acc"],
                      colors[name], TITLES[name], outcomes=record["outcome"])
        ax.set(xlabel="training step", ylabel="test accuracy")
        percent_axis(ax)
        ax.grid(alpha=0.3)
    full.set(ylim=(0, 1), title="(a) test accuracy")
    zoom.set(ylim=ZOOM, title=f"(b) the same, {ZOOM[0]:.0%} to {ZOOM[1]:.0%}")
    notes = out_of_view(results, colors, ZOOM[0])
    for k, (text, shade) in enumerate(reversed([(f"below {ZOOM[0]:.0%}:", "k")] + notes
                                               if notes else [])):
        zoom.text(0.98, 0.04 + 0.08 * k, text, transform=zoom.transAxes, ha="right",
                  color=shade, fontsize=9)
    figure_legend(top, [full], ncols=3)
    first_seed = results["provenance"]["seeds"][0]
    for ax, name, panel in zip(panels, ARMS, "cde"):
        record = results[name]
        for p, style in (("p85", ":"), ("p50", "-"), ("p15", "--")):
            ax.plot(record["step"], record[p][0], style, color=colors[name],
                    label=f"{p[1:]}th percentile")
        ax.set(xlabel="training step", ylabel="input of a last-layer sigmoid",
               title=f"({panel}) {TITLES[name]}, seed {first_seed} ({record['outcome'][0]})")
        ax.grid(alpha=0.3)
        if ax is not panels[0]:
            ax.sharey(panels[0])
    panels[0].legend(loc="best")
    draw_gap(panels[3], results)
    panels[3].grid(alpha=0.3)
    fig.suptitle("The BN paper's Figure 1, redone: 3 x 100 sigmoid units, batches of 60 "
                 "(band: range over the ok seeds)")
    return [fig]
