"""Looking inside: what does each layer's activation, gradient and weight update look like at
initialisation and after 1,000 steps, without and with BN, for a good and a bad initial scale
and for a sigmoid network? (After Karpathy's "Building makemore, part 3".)

`layer_diagnostics(model, images, labels)` measures one network on one batch of images; the
study runs it on six networks at step 0 and at step 1,000 and records every step's
update-to-data ratio per weight matrix.
"""
import math
import textwrap

import torch
import torch.nn.functional as F
from matplotlib.ticker import MaxNLocator
from torch import nn

import mlp
import plumbing
from studies.common import (color, compare, first_images, label, markdown_table, mlp_with,
                            norm_of, panel_grid, preserved, seeds_cell, show_seeds)
from studies.figure1 import figure1_network

NAME = "diagnostics"
QUESTION = "per-layer activations, gradients, update ratios"
FIGURES = ("layer_health.png", "update_ratio.png")

WEIGHTED = (nn.Linear, nn.Conv2d)               # a layer's weight matrix
NONLINEARITIES = (nn.ReLU, nn.Sigmoid, nn.Tanh)
SATURATED = 0.03   # a sigmoid output below 0.03 or above 0.97 (a tanh's |output| above 0.97)
KARPATHY_GUIDE = -3.0   # log10 of a "healthy" update-to-data ratio, for plain SGD (not momentum)
DRAWN = "mlp_n01"   # the network whose histograms layer_health.png draws (the JSON keeps only its)
RATIO_POINTS = 200   # the update ratios kept per weight matrix: means over windows of steps
LAST = 100   # the table's update ratio: each run's mean over its last LAST steps


def hidden_layers(model):
    """[(weight module, nonlinearity)] in forward order: each nonlinearity with the last Linear
    or Conv2d registered before it (whatever lies between, BN for one, is part of the layer).
    Registration order is forward order in an nn.Sequential; a custom forward may differ."""
    layers, last = [], None
    for module in model.modules():
        if isinstance(module, WEIGHTED):
            last = module
        elif isinstance(module, NONLINEARITIES) and last is not None:
            layers.append((last, module))
            last = None
    return layers


def histogram(values, bins):
    """{"mean", "std", "counts", "edges"} of a tensor's finite values (a diverged network's nan
    would make the bins undefined)."""
    values = values.detach().flatten().float().cpu()
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return {"mean": float("nan"), "std": float("nan"), "counts": [], "edges": []}
    counts, edges = torch.histogram(finite, bins=bins)
    return {"mean": values.mean().item(), "std": values.std().item(),
            "counts": counts.tolist(), "edges": edges.tolist()}


def describe(weight, nonlinearity, output, output_grad, weight_grad, bins):
    """The numbers of one hidden layer (see layer_diagnostics)."""
    units = output.detach().flatten(1)   # (images, units): a unit is a feature, or a channel
    kind = type(nonlinearity).__name__   # at one position of a conv layer's output
    dead = saturated = None
    if isinstance(nonlinearity, nn.ReLU):   # zero for every image: it gets no gradient at all
        dead = (units <= 0).all(dim=0).float().mean().item()
    elif isinstance(nonlinearity, nn.Sigmoid):
        saturated = ((units < SATURATED) | (units > 1 - SATURATED)).float().mean().item()
    else:
        saturated = (units.abs() > 1 - SATURATED).float().mean().item()
    weight_std, grad_std = weight.weight.detach().std(), weight_grad.std()
    return {"layer": f"{type(weight).__name__}{tuple(weight.weight.shape)} -> {kind}",
            "units": units.shape[1], "activation": histogram(output, bins), "dead": dead,
            "saturated": saturated, "grad": histogram(output_grad, bins),
            "weight_std": weight_std.item(), "weight_grad_std": grad_std.item(),
            "grad_to_weight": (grad_std / weight_std).item()}   # inf or nan if W is constant


def layer_diagnostics(model, images, labels, bins=50):
    """Per hidden layer (a Linear or Conv2d and the nn.ReLU, nn.Sigmoid or nn.Tanh after it, BN
    or anything else in between), from one forward and backward pass in training mode on
    `images` with cross-entropy loss:

      activation: histogram (counts, edges; `bins` bins), mean and std of the nonlinearity's
                  output;
      dead:       ReLU only: the share of units that are zero for every image (for a conv
                  layer a unit is one channel at one position); None otherwise;
      saturated:  Sigmoid (output < 0.03 or > 0.97) or Tanh (|output| > 0.97) only: the share
                  of all output values; None otherwise;
      grad:       histogram, mean and std of dL/d(the nonlinearity's output);
      grad_to_weight: std(dL/dW) / std(W) of the layer's weight matrix W.

    Returns {"loss": the probe's loss, "layers": [one dict per hidden layer, in order]}. The
    model is left exactly as it was: the gradients come from torch.autograd.grad, which leaves
    every .grad alone; common.preserved restores BN's running estimates and each module's mode.
    """
    layers = hidden_layers(model)
    if not layers:
        raise ValueError("layer_diagnostics: no ReLU, Sigmoid or Tanh after a Linear or Conv2d")
    outputs = {}

    def keep(index):
        def hook(module, inputs, output):
            if index in outputs:   # one module called twice: its two outputs would be confused
                raise ValueError(f"layer_diagnostics: {module} is called more than once; give "
                                 "each layer a nonlinearity module of its own")
            outputs[index] = output
        return hook

    handles = [nonlinearity.register_forward_hook(keep(i))
               for i, (_, nonlinearity) in enumerate(layers)]
    try:
        with preserved(model), torch.enable_grad():
            model.train()   # BN with the batch's statistics, as in a training step
            loss = F.cross_entropy(model(images), labels)
            acts = [outputs[i] for i in range(len(layers))]
            grads = torch.autograd.grad(loss, acts + [weight.weight for weight, _ in layers])
    finally:
        for handle in handles:
            handle.remove()
    act_grads, weight_grads = grads[:len(layers)], grads[len(layers):]
    return {"loss": loss.item(),
            "layers": [describe(weight, nonlinearity, act, act_grad, weight_grad, bins)
                       for (weight, nonlinearity), act, act_grad, weight_grad
                       in zip(layers, acts, act_grads, weight_grads)]}


# ----------------------------------------------------------------------------- the study

def mlp_normal(bn, std=1.0):
    """mlp.py's network with every weight drawn from N(0, std^2) (std 1: a bad scale; the
    `init` study sweeps it)."""
    def build():
        model = mlp.build_model(norm_of(bn))
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, std)
        return model
    return build


NETWORKS = {   # name -> (title, build(bn) -> a function that builds the network)
    "mlp": ("MLP 784-128-64-10, default init", mlp_with),
    "mlp_n01": ("MLP, every weight N(0, 1)", mlp_normal),
    "sigmoid": ("figure1's sigmoid net 784-3x100-10", lambda bn: lambda: figure1_network(bn)),
}
ARMS = (("no_bn", False), ("bn", True))


def whole_epochs(steps, batch, n_images):
    """(epochs, images): `steps` steps of `batch` as whole epochs over the first `images`
    training images, so that solver.train stops at exactly `steps` (1,000 steps of 100 are
    2 epochs over 50,000 of MNIST's 60,000)."""
    epochs = -(-steps * batch // n_images)
    while steps % epochs:
        epochs += 1
    return epochs, steps // epochs * batch


def settings(study):
    """(steps, probe images, config, data, probe) of the study, derived from study.data alone:
    1,000 steps as whole epochs over a slice of the training images, the report's SGD at a
    constant 0.1, and a fixed probe batch inside that slice. Quick: 10 steps, a probe of 50
    images, 200 test images."""
    steps, probe_size, n_test = (10, 50, 200) if study.quick else (1000, 1000, None)
    train_x, train_y = study.data[:2]
    config = study.config()
    epochs, images = whole_epochs(steps, config["batch_size"], len(train_x))
    config["max_epoch"] = epochs
    return (steps, probe_size, config, first_images(study.data, images, n_test),
            (train_x[:probe_size], train_y[:probe_size]))


def trainings(study):
    """Six networks (three, each without and with BN), at every seed."""
    return [{"network": name, "arm": arm, "seed": seed}
            for name in NETWORKS for arm, _ in ARMS for seed in study.seeds]


def train_one(study, job):
    """Train one network; its diagnostics at step 0 and at the end, every update's ratio
    std(update) / std(W) per weight matrix, momentum and weight decay included.

    At step k's on_step (before update k) the weights are those after update k - 1: its ratio
    is taken there, and the last update's after training. A non-finite loss stops the run at
    that very step (plumbing.Diverged), so a diverged run records the updates before it."""
    _, _, config, data, probe = settings(study)
    bn = dict(ARMS)[job["arm"]]
    model = study.model(NETWORKS[job["network"]][1](bn), job["seed"])
    start = layer_diagnostics(model, *probe)
    weights = [m.weight for m in model.modules() if isinstance(m, WEIGHTED)]
    before = [w.detach().clone() for w in weights]   # the weights before the latest update
    ratios = []   # one tensor per update, kept as tensors: no .item() in the loop

    @torch.no_grad()
    def take_ratio():
        ratios.append(torch.stack([(w - b).std() / b.std() for w, b in zip(weights, before)]))
        for w, b in zip(weights, before):
            b.copy_(w)

    def on_step(iteration, model, optimizer, images, labels, loss):
        if iteration > 1:   # update iteration - 1 is done
            take_ratio()
        plumbing.stop_if_diverged(loss.detach()[None], iteration)

    _, outcome, acc = study.train(model, config, job["seed"], on_step=on_step, data=data)
    if outcome != "diverged":
        take_ratio()   # the last update's
    end = layer_diagnostics(model, *probe) if outcome != "diverged" else None
    log_ratio = torch.stack(ratios).log10().T.tolist() if ratios else [[] for _ in weights]
    return {"outcome": outcome, "test_acc": acc, "steps_done": len(ratios), "start": start,
            "end": end, "log10_update_ratio": log_ratio,
            "weights": [f"{type(m).__name__}{tuple(m.weight.shape)}" for m in model.modules()
                        if isinstance(m, WEIGHTED)]}


def drawn_seed(outcomes):
    """The index of the seed whose histograms layer_health.png draws: the first that did not
    diverge (a diverged run has no last step to show); None where every one did."""
    return next((k for k, verdict in enumerate(outcomes) if verdict != "diverged"), None)


def compact(diagnostics, histograms):
    """A probe's diagnostics as the JSON keeps them: every number of each layer, its
    histograms reduced to mean and std, or (histograms=True: the ones drawn) with their counts
    as integers and the range their equal bins span in place of the bins' edges."""
    if diagnostics is None:
        return None

    def reduced(h):
        kept = {"mean": h["mean"], "std": h["std"]}
        if histograms and h["counts"]:
            kept.update(counts=[round(c) for c in h["counts"]],
                        range=[h["edges"][0], h["edges"][-1]])
        return kept
    return {"loss": diagnostics["loss"],
            "layers": [{**layer, "activation": reduced(layer["activation"]),
                        "grad": reduced(layer["grad"])} for layer in diagnostics["layers"]]}


def windows(values, every):
    """(last step, mean) of each window of `every` steps (steps counted from 1), the last
    window ending at the last value."""
    return [(min(start + every, len(values)),
             sum(values[start:start + every]) / len(values[start:start + every]))
            for start in range(0, len(values), every)]


def ratio_record(log_ratios, outcomes, seeds, steps):
    """The update ratios as update_ratio.png and the table use them: per weight matrix the
    mean over the ok seeds (each of which ran every step), in windows of `every` steps; each
    failed or diverged run's own ratios in the same windows, up to its last step; and per run
    and weight matrix its mean over its last LAST steps."""
    every = max(1, steps // RATIO_POINTS)
    weights = len(log_ratios[0]) if log_ratios else 0
    ok = [ratios for ratios, verdict in zip(log_ratios, outcomes) if verdict == "ok"]
    mean = [None if not ok else [v for _, v in windows(
        [sum(r[i][k] for r in ok) / len(ok) for k in range(steps)], every)]
        for i in range(weights)]
    return {"every": every, "step": [x for x, _ in windows([0.0] * steps, every)],
            "ok_mean": mean,
            "runs": [{"seed": seed, "outcome": verdict,
                      "step": [x for x, _ in windows(ratios[0], every)],
                      "ratios": [[v for _, v in windows(r, every)] for r in ratios]}
                     for seed, ratios, verdict in zip(seeds, log_ratios, outcomes)
                     if verdict != "ok" and ratios and ratios[0]],
            "last": [[sum(r[-LAST:]) / len(r[-LAST:]) if r else None for r in ratios]
                     for ratios in log_ratios]}


def assemble(study, jobs, results):
    """Per network and arm, each result as a list over seeds; the weight matrices' names once.
    Kept compact: histograms only where layer_health.png draws them (DRAWN, its seed), the
    update ratios as ratio_record keeps them."""
    steps, probe_size, config, data, _ = settings(study)
    record = {"rule": f"SGD lr {config['learning_rate']} constant, momentum "
                      f"{config['momentum']}, weight decay {config['weight_decay']}, batch "
                      f"{config['batch_size']}: {config['max_epoch']} epochs over the first "
                      f"{len(data[0]):,} training images = {steps:,} steps; diagnostics on the "
                      f"first {probe_size:,} training images, in training mode",
              "steps": steps, "epochs": config["max_epoch"], "train_images": len(data[0]),
              "probe_images": probe_size,
              "networks": {name: {"title": title} for name, (title, _) in NETWORKS.items()}}
    for (name, arm), runs in grouped(jobs, results).items():
        outcomes = [result["outcome"] for _, result in runs]
        shown = drawn_seed(outcomes) if name == DRAWN else None
        record["networks"][name][arm] = {
            "outcome": outcomes, "test_acc": [result["test_acc"] for _, result in runs],
            "steps_done": [result["steps_done"] for _, result in runs],
            "drawn_seed": shown,
            **{when: [compact(result[when], k == shown) for k, (_, result) in enumerate(runs)]
               for when in ("start", "end")},
            "log10_update_ratio": ratio_record([result["log10_update_ratio"] for _, result in runs],
                                               outcomes, [job["seed"] for job, _ in runs], steps),
            "weights": runs[0][1]["weights"]}
    return record


def grouped(jobs, results):
    """{(network, arm): [(job, result) in seed order]}."""
    runs = {}
    for job, result in zip(jobs, results):
        runs.setdefault((job["network"], job["arm"]), []).append((job, result))
    return runs


def by_outcome(per_seed, outcomes, spec=".3g"):
    """A table cell of one number per layer (per_seed[s]: a list over layers, or None): the
    mean (range) over the ok seeds, layers joined by " / "; the failed and diverged seeds
    beside it, each kind as its range (never a mean): "ok 3: 0.1 (0.09-0.11) / 0.2; failed 2:
    0.8 to 0.9 / 1"."""
    def span(values):
        low, high = min(values), max(values)
        return f"{low:{spec}}" if low == high else f"{low:{spec}} to {high:{spec}}"

    parts = []
    for kind in ("ok", "failed", "diverged"):
        seeds = [v for v, verdict in zip(per_seed, outcomes) if verdict == kind and v is not None]
        if not seeds:
            continue
        layers = [[seed[i] for seed in seeds if seed[i] is not None]
                  for i in range(len(seeds[0]))]
        cells = [("-" if not values else show_seeds(values, spec) if kind == "ok"
                  else span(values)) for values in layers]
        parts.append((kind, len(seeds), " / ".join(cells)))
    if not parts:
        return "-"
    if len(parts) == 1 and parts[0][0] == "ok" and parts[0][1] == len(outcomes):
        return parts[0][2]
    return "; ".join(f"{kind} {n}: {cells}" for kind, n, cells in parts)


def per_layer(diagnostics, key):
    """Per seed the list over layers of a layer's number (None where the seed has none)."""
    return [None if d is None else [layer[key] for layer in d["layers"]] for d in diagnostics]


def share_key(r):
    """"dead" (ReLU networks) or "saturated" (sigmoid)."""
    layers = next(d for d in r["start"] if d is not None)["layers"]
    return "dead" if layers[0]["dead"] is not None else "saturated"


def table(results):
    """Four tables: test accuracy without and with BN and the effect rule on their difference;
    the dead or saturated share per layer; std(dL/dW) / std(W); the update ratios at the end.
    Every number over the ok seeds, the failed and diverged ones beside them as ranges."""
    rows_acc, rows_share, rows_std, rows_ratio = [], [], [], []
    for record in results["networks"].values():
        a, b = record["no_bn"], record["bn"]
        rows_acc.append((record["title"], seeds_cell(a["test_acc"], a["outcome"]),
                         seeds_cell(b["test_acc"], b["outcome"]),
                         compare(a["test_acc"], b["test_acc"], a["outcome"], b["outcome"])[1]))
        for arm, bn in ARMS:
            r, name = record[arm], f"{record['title']}, {label(bn)}"
            key = share_key(r)
            rows_share.append((name, key, by_outcome(per_layer(r["start"], key), r["outcome"]),
                               by_outcome(per_layer(r["end"], key), r["outcome"])))
            rows_std.append((name, by_outcome(per_layer(r["start"], "grad_to_weight"),
                                              r["outcome"]),
                             by_outcome(per_layer(r["end"], "grad_to_weight"), r["outcome"]),
                             by_outcome(per_layer(r["start"], "weight_grad_std"), r["outcome"])))
            rows_ratio.append((name, " / ".join(r["weights"]),
                               by_outcome(r["log10_update_ratio"]["last"], r["outcome"], "+.2f")))
    steps = f"step {results['steps']:,}"
    return "\n".join([
        markdown_table(["network", "test acc, without BN", "with BN", "with BN - without BN"],
                       rows_acc),
        markdown_table(["network", "share", "per layer at step 0", f"per layer at {steps}"],
                       rows_share),
        markdown_table(["network", "std(dL/dW)/std(W), step 0", f"std(dL/dW)/std(W), {steps}",
                        "std(dL/dW), step 0"], rows_std),
        markdown_table(["network", "weight matrices",
                        f"log10 update ratio, last {LAST} steps"], rows_ratio)])


def draw(results):
    """Both figures from diagnostics.json's numbers (also `experiments.py diagnostics
    --redraw`), in FIGURES' order."""
    return [draw_layer_health(results), draw_update_ratio(results)]


def histogram_edges(h):
    """The bins' edges of a histogram as the JSON keeps it: equal bins over its range."""
    return torch.linspace(*h["range"], len(h["counts"]) + 1)


def x_scale(histograms):
    """How layer_health.png's x axis shows the histograms of one panel (the JSON's, with counts):
    ("linear", None), or ("symlog", linthresh) where their values span more decades than a
    linear axis can show without a multiplier beside its ticks (a diverging run's 1e12 beside
    a healthy 17), linear within a tenth of the narrowest non-zero spread."""
    reach = max((abs(edge) for h in histograms for edge in h["range"]), default=0.0)
    spread = min((h["std"] for h in histograms if h["std"] > 0), default=0.0)
    if reach == 0 or spread == 0:
        return "linear", None
    if reach / spread > 1e3 or reach >= 1e5 or reach < 1e-4:
        return "symlog", spread / 10
    return "linear", None


def symlog_ticks(linthresh, histograms, most=4):
    """A symlog axis's ticks: 0 and powers of ten on each side that has values, from a decade
    beyond linthresh to the last within the values, every k-th decade so that there are about
    `most` in all (so that their labels do not run into each other)."""
    low = min(h["range"][0] for h in histograms)
    high = max(h["range"][1] for h in histograms)
    first = math.ceil(math.log10(linthresh)) + 1
    sides = [(sign, math.floor(math.log10(reach))) for sign, reach in ((1, high), (-1, -low))
             if reach >= 10.0 ** first]
    every = max(1, math.ceil(sum(last - first + 1 for _, last in sides) / most))
    return sorted([0.0] + [sign * 10.0 ** k for sign, last in sides
                           for k in range(last, first - 1, -every)])


def draw_layer_health(results):
    """The bad scale N(0, 1) (DRAWN): activations and gradients per hidden layer, step 0
    against the last step, without BN (left) and with BN (right), a row per layer and
    quantity, for the first seed that did not diverge (a diverged run has no last step to
    show), its outcome in the titles. One seed's histograms: nothing is averaged. An x axis
    whose values span many decades is symlog (x_scale)."""
    record, steps = results["networks"][DRAWN], results["steps"]
    seeds = results["provenance"]["seeds"]
    n = len(record["no_bn"]["start"][0]["layers"])
    fig, panels = panel_grid(4 * n, height=2.7, extra=0.8)
    axes = [[panels[2 * row + column][0] for row in range(2 * n)] for column in range(2)]
    floors, notes = {}, []   # per panel, its lowest non-zero density; the diverged seeds
    drawn = {}   # per panel, the histograms drawn in it
    for column, (arm, bn) in enumerate(ARMS):
        r = record[arm]
        shown = r["drawn_seed"]
        diverged = [f"seed {seeds[k]} at step {done + 1}"
                    for k, (done, end) in enumerate(zip(r["steps_done"], r["end"])) if end is None]
        if diverged:
            notes.append(f"{label(bn)}, diverged: " + ", ".join(diverged))
        if shown is None:   # every seed diverged
            for ax in axes[column]:
                ax.text(0.5, 0.5, f"diverged at step {r['steps_done'][0] + 1}",
                        transform=ax.transAxes, ha="center", color=color(bn))
            continue
        for when, diagnostics, style in ((0, r["start"][shown], ":"),
                                         (steps, r["end"][shown], "-")):
            for i, layer in enumerate(diagnostics["layers"]):
                for ax, key, what in ((axes[column][i], "activation", "{}"),
                                      (axes[column][n + i], "grad", "dL/d({})")):
                    h = layer[key]
                    extra = f", dead {layer['dead']:.0%}" if key == "activation" else ""
                    ax.set(yscale="log", xlabel=what.format(f"layer {i + 1} ReLU output"),
                           title=f"{label(bn)}, seed {seeds[shown]} ({r['outcome'][shown]}):\n"
                                 f"layer {i + 1} "
                                 + ("activations" if key == "activation" else "gradients"))
                    if not h.get("counts"):
                        continue
                    drawn.setdefault(ax, []).append(h)
                    if h["std"] == 0:   # every value the same (a dead layer): no spread to draw
                        ax.axvline(h["mean"], color=color(bn), linestyle=style, lw=1.6,
                                   label=f"step {when:,}: every value {h['mean']:.3g}{extra}")
                        continue
                    edges = histogram_edges(h)
                    density = torch.tensor(h["counts"]) / (sum(h["counts"]) * edges.diff())
                    # empty bins drop to just below the axis: a log axis has no zero
                    lowest = density[density > 0].min().item()
                    floors[ax] = min(floors.get(ax, lowest), lowest)
                    ax.stairs(density.clamp(min=lowest / 10).tolist(), edges.tolist(),
                              color=color(bn), linestyle=style, lw=1.6, baseline=None,
                              label=f"step {when:,}: std {h['std']:.3g}{extra}")
    for ax in (ax for column in axes for ax in column):
        ax.set_ylabel("density (log scale)")
        ax.grid(alpha=0.3)
        scale, linthresh = x_scale(drawn.get(ax, []))
        if scale == "symlog":
            ax.set_xscale("symlog", linthresh=linthresh)
            ax.set_xticks(symlog_ticks(linthresh, drawn[ax]))
            ax.set_xlabel(ax.get_xlabel() + " (symlog)")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(5))
        if ax in floors:   # room above the curves for the legend: a log axis, so a factor
            low, high = floors[ax] / 2, ax.get_ylim()[1]
            ax.set_ylim(low, high * (high / low) ** 0.45)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8.5, loc="upper right")
    fig.suptitle(f"{record['title']}: each hidden layer's ReLU output and its gradient on "
                 f"{results['probe_images']:,} training images,\nstep 0 (dotted) and step "
                 f"{steps:,} (solid)"
                 + ("\n" + textwrap.fill(f"({'; '.join(notes)})", 100) if notes else ""))
    return fig


CLIP = 2.0   # update_ratio.png's top: a diverging run's last ratios reach 1e8


def update_ratio_lines(r):
    """What update_ratio.png draws for one network and arm, per weight matrix i:
    (i, "ok mean", steps, values) for the mean over the ok seeds, and (i, outcome, steps,
    values) for each failed or diverged run on its own, its values cut at CLIP."""
    record = r["log10_update_ratio"]
    lines = [(i, "ok mean", record["step"], mean) for i, mean in enumerate(record["ok_mean"])
             if mean is not None]
    lines += [(i, run_["outcome"], run_["step"], [min(v, CLIP) for v in ratios])
              for run_ in record["runs"] for i, ratios in enumerate(run_["ratios"])]
    return lines


def draw_update_ratio(results):
    """log10(std(update) / std(W)) per weight matrix over training: a row per network, without
    BN left and with BN right, on one y scale; the mean over the ok seeds (all of which ran
    every step), layers by line style; each failed or diverged run a thin line of its own, up
    to its last step (v or x): never part of the mean. Every line in windows of a few steps
    (the JSON keeps RATIO_POINTS per line)."""
    names, steps = list(results["networks"]), results["steps"]
    fig, panels = panel_grid(2 * len(names), height=3.0, extra=0.6)
    for ax, _ in panels[1:]:
        ax.sharey(panels[0][0])
    styles, every = ("-", "--", "-.", ":"), 1
    for row, name in enumerate(names):
        record = results["networks"][name]
        for col, (arm, bn) in enumerate(ARMS):
            ax, r = panels[2 * row + col][0], record[arm]
            every = r["log10_update_ratio"]["every"]
            for i, kind, xs, values in update_ratio_lines(r):
                style = dict(color=color(bn), alpha=1 - 0.15 * i)
                if kind == "ok mean":
                    ax.plot(xs, values, styles[i % len(styles)], lw=1.0,
                            label=f"layer {i + 1}: {r['weights'][i]}", **style)
                    continue
                ax.plot(xs, values, styles[i % len(styles)], lw=0.6, **style)
                ax.plot(xs[-1], values[-1], "v" if kind == "failed" else "x", ms=7, **style)
            for kind, mark in (("failed", "v"), ("diverged", "x")):
                if kind in r["outcome"]:
                    ax.plot([], [], f"{mark}-", lw=0.6, color=color(bn),
                            label=f"a {kind} seed on its own, to its last step"
                                  + (f" (cut at {CLIP:+g})" if kind == "diverged" else ""))
            ax.axhline(KARPATHY_GUIDE, color="gray", ls="--", lw=1,
                       label="-3: Karpathy's guide (plain SGD)")
            ok = r["outcome"].count("ok")
            ax.set(title=f"{record['title']}\n{label(bn)}: mean of {ok} ok of "
                         f"{len(r['outcome'])} seeds",
                   xlabel="step", ylabel="log10 std(update) / std(W)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8.5, loc="upper right")
    fig.suptitle("Update-to-data ratio per weight matrix, SGD with momentum 0.9 at lr 0.1\n(mean "
                 "over the ok seeds" + (f", in windows of {every} steps" if every > 1 else "")
                 + "; failed and diverged seeds on their own)")
    return fig
