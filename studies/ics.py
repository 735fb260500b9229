"""Internal covariate shift, measured as Santurkar et al. (2018) define it (Definition 2.1,
Fig. 3): how much does a layer's gradient change when the layers before it take their update?
If BN reduced internal covariate shift, the change should be smaller with BN. Is it, on the
report's MLP and CNN?"""
import copy

import torch
import torch.nn.functional as F

import plot
from studies.common import (ARMS, color, figure_legend, label, markdown_table, norm_of,
                            panel_grid)
from studies.why_bn import (NETWORKS, against, draw_band, finite, layer_name, measured,
                            ok_only, schedule, start_and_later, tallied, training_data,
                            weighted_layers)

NAME = "ics"
QUESTION = "internal covariate shift as Santurkar et al. (2018) define it, with and without BN"
FIGURES = ("internal_covariate_shift.png",)


def covariate_shift(model, optimizer, images, labels):
    """S18's Definition 2.1 at one step, for every layer i with weights, in order.

    G: the loss gradient w.r.t. layer i's weights on the batch (images, labels), as training
    computed it (in .grad, the model at the step's weights). G': the same gradient on the same
    batch after every parameter before layer i (BN's gamma and beta included) has taken this
    step's real update, layer i and those after it unchanged. The update is the optimizer's
    own: a deep copy of model and optimizer (momentum buffers, weight decay, rate) takes the
    step. Returns [{"distance": ||G - G'||_2, "cos": cos(G, G'), "grad_norm": ||G||}] per
    layer. Everything is done on copies, in training mode as training is: model, optimizer,
    .grad and BN running estimates are left as they were, and no random number is drawn.
    """
    params = list(model.parameters())
    ahead, ahead_optimizer = copy.deepcopy((model, optimizer))   # one memo: the same params
    for p_ahead, p in zip(ahead.parameters(), params):
        p_ahead.grad = p.grad.clone()   # a deep copy of a Parameter leaves .grad behind
    ahead_optimizer.step()
    ahead_params = list(ahead.parameters())
    rows = []
    for layer in weighted_layers(model):
        k = next(i for i, p in enumerate(params) if p is layer.weight)   # the parameters
        shifted = copy.deepcopy(model)   # before layer i's weight are those of earlier layers
        shifted_params = list(shifted.parameters())
        with torch.no_grad():
            for p_shifted, p_ahead in zip(shifted_params[:k], ahead_params[:k]):
                p_shifted.copy_(p_ahead)
        loss = F.cross_entropy(shifted(images), labels)
        # every parameter's gradient, as training's backward computes it, so that for the first
        # layer (nothing before it) G' is G to the last bit
        g_shifted = torch.autograd.grad(loss, shifted_params)[k].double()
        g = layer.weight.grad.double()   # float32 sums of 100,000 products miss cos = 1 by 1e-5
        distance = (g - g_shifted).norm()
        cos = (g * g_shifted).sum() / (g.norm() * g_shifted.norm())
        rows.append({"distance": finite(distance), "cos": finite(cos),
                     "grad_norm": finite(g.norm())})
    return rows


def train_measured(study, network, bn, seed, config, measure=True):
    """One seeded run of NETWORKS[network] with (bn) or without BN; with measure, the
    covariate shift of every weighted layer before the update of steps 1, every, 2 * every, ...
    (every: config's disp_freq). Returns (history, outcome, test acc, record); the measurement
    changes nothing in the run."""
    model = study.model(lambda: NETWORKS[network](norm_of(bn)), seed)
    layers = weighted_layers(model)
    record = {"step": [], "distance": [[] for _ in layers], "cos": [[] for _ in layers],
              "grad_norm": [[] for _ in layers]}

    def on_step(step, model, optimizer, images, labels, loss):
        if not measured(step, config["disp_freq"]):
            return
        record["step"].append(step)
        for i, row in enumerate(covariate_shift(model, optimizer, images, labels)):
            for key, value in row.items():
                record[key][i].append(value)

    history, outcome, acc = study.train(model, config, seed, on_step=on_step if measure else None,
                                        data=training_data(study))
    return history, outcome, acc, record


def trainings(study):
    """The MLP and the CNN, each without and with BN, at every seed."""
    return [{"network": network, "arm": arm, "seed": seed}
            for network in NETWORKS for arm in ARMS for seed in study.seeds]


def train_one(study, job):
    """One measured run at the report's SGD at 0.1: its outcome and the covariate shift of
    every weighted layer over training."""
    _, outcome, acc, record = train_measured(study, job["network"], job["arm"] == "bn",
                                             job["seed"], study.config(**schedule(study)))
    return {"outcome": outcome, "test_acc": acc, **record}


def assemble(study, jobs, results):
    """Per network its layers' names and each arm's lists over seeds (distance, cos and
    grad_norm: per layer, then per seed)."""
    config = study.config(**schedule(study))
    assembled = {"epochs": config["max_epoch"], "batch_size": config["batch_size"],
                 "measure_every": config["disp_freq"],
                 "learning_rate": config["learning_rate"],
                 "definition": "G: loss gradient w.r.t. layer i's weights on the step's batch; "
                               "G': the same after the step's update of every earlier layer"}
    for network, build in NETWORKS.items():
        names = [layer_name(layer) for layer in weighted_layers(build("none"))]
        assembled[network] = {"layers": names}
        for arm in ARMS:
            assembled[network][arm] = {"test_acc": [], "outcome": [], "step": [],
                                       "distance": [[] for _ in names],
                                       "cos": [[] for _ in names],
                                       "grad_norm": [[] for _ in names]}
    for job, result in zip(jobs, results):
        arm = assembled[job["network"]][job["arm"]]
        for key in ("test_acc", "outcome", "step"):
            arm[key].append(result[key])
        for key in ("distance", "cos", "grad_norm"):
            for i, values in enumerate(result[key]):
                arm[key][i].append(values)
    return assembled


def relative_change(arm, i):
    """Per seed, the median over the later measurements of ||G - G'|| / ||G|| of layer i."""
    relative = [[d / g for d, g in zip(ds, gs) if d is not None and g]
                for ds, gs in zip(arm["distance"][i], arm["grad_norm"][i])]
    return start_and_later(relative)[1]


def table(results):
    """Two tables. Per network, layer after the first, and arm: ||G - G'|| at step 1 and later
    (median), mean (range) over the ok seeds. Then per network the effect rule on with BN
    against without: the final test accuracy, and per layer ||G - G'|| / ||G|| and
    cos(G, G') later (medians), with each arm's ok seeds (the others counted)."""
    measures, compared = [], []
    for network in NETWORKS:
        no_bn, bn = results[network]["no_bn"], results[network]["bn"]
        outcomes = (no_bn["outcome"], bn["outcome"])
        compared.append((network, "final test acc",
                         *against(no_bn["test_acc"], bn["test_acc"], *outcomes, spec=".2%")))
        for i, name in enumerate(results[network]["layers"][1:], start=1):
            for key in ARMS:
                arm = results[network][key]
                first, later = start_and_later(arm["distance"][i])
                measures.append((network, name, tallied(label(key == "bn"), arm["outcome"]),
                                 ok_only(first, arm["outcome"]), ok_only(later, arm["outcome"])))
            compared.append((network, f"{name}: ||G - G'|| / ||G|| later",
                             *against(relative_change(no_bn, i), relative_change(bn, i),
                                      *outcomes)))
            compared.append((network, f"{name}: cos(G, G') later",
                             *against(start_and_later(no_bn["cos"][i])[1],
                                      start_and_later(bn["cos"][i])[1], *outcomes)))
    return "\n".join([
        markdown_table(["network", "layer", "arm", "||G - G'|| at step 1",
                        "||G - G'|| later (median)"], measures),
        markdown_table(["network", "measure", "without BN", "with BN", "with BN - without BN"],
                       compared)])


def draw(results):
    """Per network: ||G - G'|| and cos(G, G') over training for the layers after the first
    (the first has nothing before it: G' = G), with BN and without."""
    fig, panels = panel_grid(4, height=3.4, extra=0.6)
    axes = [[ax for ax, _ in panels[:2]], [ax for ax, _ in panels[2:]]]
    styles = ["-", "--", ":", "-."]
    for row, network in zip(axes, NETWORKS):
        names = results[network]["layers"]
        for bn in (False, True):
            arm = results[network]["bn" if bn else "no_bn"]
            for i in range(1, len(names)):   # failed and diverged runs: lines of their own
                name = f"{label(bn)}, layer {i + 1}"
                draw_band(row[0], arm["step"], arm["distance"][i], color(bn), name,
                          styles[(i - 1) % len(styles)], outcomes=arm["outcome"])
                draw_band(row[1], arm["step"], arm["cos"][i], color(bn), name,
                          styles[(i - 1) % len(styles)], outcomes=arm["outcome"])
        row[0].set(xlabel="training step", ylabel="||G - G'|| (log scale)",
                   title=f"{network.upper()}: gradient change, earlier layers updated")
        plot.log_axis(row[0])
        row[1].set(xlabel="training step", ylabel="cos(G, G')",
                   title=f"{network.upper()}: cosine of G and G' (1: same direction)")
        for ax in row:
            ax.grid(alpha=0.3)
    figure_legend(fig, [ax for row in axes for ax in row])
    layers = "; ".join(f"{network.upper()} " + ", ".join(
        f"layer {i + 1} {name}" for i, name in enumerate(results[network]["layers"]) if i)
        for network in NETWORKS)
    fig.suptitle("Internal covariate shift as Santurkar et al. (2018) measure it (Definition "
                 f"2.1)\n{layers}\nline: mean over the ok seeds, band: their range")
    return [fig]
