"""Noisy BN (Santurkar et al. 2018, section 2.1, appendix A.2.1, Algorithm 1): if BN helped by
keeping each layer's input distribution steady (the 2015 answer), BN followed by noise that
shifts and scales every unit's distribution afresh at every step should lose that help. Does
it, on the report's MLP and CNN? And the same noise without BN?"""
import matplotlib.pyplot as plt
import torch
from torch import nn

import plot
import solver
from batchnorm import BatchNorm
from studies.common import (add_panels, compare, figure_legend, markdown_table, module_input,
                            percent_axis)
from studies.why_bn import NETWORKS, draw_band, ok_only, schedule, tallied, training_data

NAME = "noisy"
QUESTION = "noisy BN (Santurkar et al. 2018): does BN help by steadying each layer's input?"
FIGURES = ("noisy_bn.png",)

ARMS = {   # key -> (label, colour): one colour per arm
    "none": ("without normalization", "tab:orange"),
    "bn": ("BN", "tab:blue"),
    "bn_noise": ("BN + noise (noisy BN)", "tab:green"),
    "noise": ("noise alone, in BN's place", "tab:red"),
}


class BatchNoise(nn.Module):
    """S18's Algorithm 1: in training, a fresh random shift and scale of every unit's values.

    At every forward call in training mode, for every unit (channel) j of the input (N, C) or
    (N, C, H, W): mu_j ~ U(-n_mu, n_mu) and sigma_j ~ U(1, n_sigma); then for every value i of
    that unit (the batch, and height and width for convolutions), m_i ~ U(mu_j - r_mu,
    mu_j + r_mu) and s_i ~ N(sigma_j, r_sigma) (r_sigma a standard deviation), and
    a_i -> s_i * a_i + m_i. The paper's values are the defaults. The draws are constants for
    the gradient. Identity in eval mode. Draws come from `generator`, or torch's global
    generator (seeded by Study.model) when it is None: a seeded run is reproducible.
    """

    def __init__(self, n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1, generator=None):
        super().__init__()
        self.n_mu, self.n_sigma, self.r_mu, self.r_sigma = n_mu, n_sigma, r_mu, r_sigma
        self.generator = generator

    def extra_repr(self):
        return (f"n_mu={self.n_mu}, n_sigma={self.n_sigma}, r_mu={self.r_mu}, "
                f"r_sigma={self.r_sigma}")

    def forward(self, a):
        if not self.training:
            return a
        unit_shape = [1, a.shape[1]] + [1] * (a.dim() - 2)   # one mu_j, sigma_j per channel
        like = dict(device=a.device, dtype=a.dtype)
        draw = dict(generator=self.generator)
        mu = torch.empty(unit_shape, **like).uniform_(-self.n_mu, self.n_mu, **draw)
        sigma = torch.empty(unit_shape, **like).uniform_(1.0, self.n_sigma, **draw)
        m = mu + torch.empty(a.shape, **like).uniform_(-self.r_mu, self.r_mu, **draw)
        s = sigma + self.r_sigma * torch.randn(a.shape, **like, **draw)
        return s * a + m


def build_arm(network, arm):
    """One of ARMS on the report's `network` ("mlp" or "cnn").

    "bn_noise": BatchNoise after each BN layer of build_model("bn"); "noise": each BN layer of
    build_model("bn") swapped for BatchNoise. The bias rule stays that network's: the MLP's
    linear layers have no bias in every arm, the CNN's convolutions keep theirs. BN and
    BatchNoise draw nothing at construction, so under one seed all four arms start from the
    same weights."""
    build = NETWORKS[network]
    if arm in ("none", "bn"):
        return build(arm)
    layers = []
    for module in build("bn"):
        if not isinstance(module, BatchNorm):
            layers.append(module)
            continue
        if arm == "bn_noise":
            layers.append(module)
        layers.append(BatchNoise())
    return nn.Sequential(*layers)


def generator_state(device):
    """The state of torch's global generator that random draws on `device` come from."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def first_relu_input(model, images, state):
    """The input of the model's first ReLU as a training step's own forward computed it: the
    model (at the step's weights) run again on the step's images, from the generator state
    `state` that forward started from, so that the noise layers draw the very noise the step
    drew. The model and torch's generator are left as they were."""
    first_relu = next(m for m in model.modules() if isinstance(m, nn.ReLU))
    device = images.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if device.type == "cuda":
            torch.cuda.set_rng_state(state, device)
        else:
            torch.set_rng_state(state)
        return module_input(model, first_relu, images)


def train_arm(study, network, arm, seed, config):
    """One seeded run: final (outcome, test acc), test accuracy over training (eval mode, the
    noise off) and the 15th/50th/85th percentiles of unit 0 of the first ReLU's input on the
    training batch in training mode (noise on) of each window's last step, both recorded where
    solver.train_one_epoch closes a window: every disp_freq steps and at each epoch's end."""
    model = study.model(lambda: build_arm(network, arm), seed)
    curve = {"step": [], "test_acc": [], "p15": [], "p50": [], "p85": []}
    data = training_data(study)
    test_x, test_y = data[2], data[3]
    steps_per_epoch = len(data[0]) // config["batch_size"]
    # the global generator's state before each step's forward: nothing draws from it between
    # one step's on_step and the next step's forward (the batch order has its own generator)
    before_forward = generator_state(study.device)
    last_step = {}   # the percentiles of the window's last step, until the window closes

    def on_step(iteration, model, optimizer, images, labels, loss):
        nonlocal before_forward
        if iteration % config["disp_freq"] == 0 or iteration % steps_per_epoch == 0:
            unit = first_relu_input(model, images, before_forward)[:, solver.PROBE_UNIT]
            last_step.update(solver.percentiles(unit))
        before_forward = generator_state(study.device)

    def on_window(iteration, model):
        curve["step"].append(iteration)
        curve["test_acc"].append(solver.evaluate(model, test_x, test_y)[1])
        for key, value in last_step.items():
            curve[key].append(value)

    _, outcome, acc = study.train(model, config, seed, on_window=on_window, on_step=on_step,
                                  data=data)
    return outcome, acc, curve


def median_jump(p50):
    """How unsteady a unit's input distribution is: the mean |change| of its median between
    consecutive measurements."""
    jumps = [abs(b - a) for a, b in zip(p50, p50[1:])]
    return sum(jumps) / len(jumps) if jumps else None


def trainings(study):
    """The four arms on the MLP and the CNN, each at every seed."""
    return [{"network": network, "arm": arm, "seed": seed}
            for network in NETWORKS for arm in ARMS for seed in study.seeds]


def train_one(study, job):
    """One run at the report's SGD at 0.1: its outcome, the test accuracy over training and
    the first ReLU's unit 0 over training (percentiles, and their median's mean jump)."""
    outcome, acc, curve = train_arm(study, job["network"], job["arm"], job["seed"],
                                    study.config(**schedule(study)))
    return {"outcome": outcome, "test_acc": acc, "step": curve["step"],
            "test_acc_curve": curve["test_acc"],
            **{p: curve[p] for p in ("p15", "p50", "p85")},
            "median_jump": median_jump(curve["p50"])}


def assemble(study, jobs, results):
    """Per network and arm, every measure as a list over seeds."""
    config = study.config(**schedule(study))
    assembled = {"epochs": config["max_epoch"], "batch_size": config["batch_size"],
                 "measure_every": config["disp_freq"], "learning_rate": config["learning_rate"],
                 "noise": {"n_mu": 0.5, "n_sigma": 1.25, "r_mu": 0.1, "r_sigma": 0.1},
                 "probe": "unit 0 of the first ReLU's input, training batch, training mode",
                 "arms": {arm: name for arm, (name, _) in ARMS.items()}}
    for network in NETWORKS:
        assembled[network] = {arm: {} for arm in ARMS}
    for job, result in zip(jobs, results):
        record = assembled[job["network"]][job["arm"]]
        for key, value in result.items():
            record.setdefault(key, []).append(value)
    return assembled


COMPARED = (("bn", "none"), ("bn_noise", "bn"), ("noise", "none"))   # (b, a): b - a
SHORT = {"none": "no normalization", "bn": "BN", "bn_noise": "noisy BN", "noise": "noise alone"}


def table(results):
    """Each arm's final test accuracy and median jump over its ok seeds (the others counted);
    then the effect rule on BN against no normalization, noisy BN against BN, and noise alone
    against no normalization."""
    arms = markdown_table(
        ["network", "arm", "final test acc", "median jump"],
        [(network, tallied(ARMS[arm][0], r["outcome"]),
          ok_only(r["test_acc"], r["outcome"], ".2%"), ok_only(r["median_jump"], r["outcome"]))
         for network in NETWORKS for arm, r in results[network].items()])
    rows = []
    for network in NETWORKS:
        for b, a in COMPARED:
            rb, ra = results[network][b], results[network][a]
            rows.append((network, f"{SHORT[b]} - {SHORT[a]}",
                         compare(ra["test_acc"], rb["test_acc"], ra["outcome"],
                                 rb["outcome"])[1],
                         compare(ra["median_jump"], rb["median_jump"], ra["outcome"],
                                 rb["outcome"], scale=1, decimals=3, unit="")[1]))
    return "\n".join([arms, markdown_table(["network", "comparison", "final test acc",
                                            "median jump"], rows)])


def draw(results):
    """Per network: test accuracy of the four arms over training (top, side by side); the first
    ReLU's input percentiles with BN and with noisy BN (a row per network; the first seed: an
    average would hide the jumps)."""
    fig = plt.figure(figsize=(plot.WIDTH, 3.2 + 1.2 + 2 * 3.0), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.2 + 1.2, 2 * 3.0])
    accuracy = [ax for ax, _ in add_panels(top, 2, height=3.2)]
    percentiles = [ax for ax, _ in add_panels(bottom, 4, height=3.0)]
    seed = results["provenance"]["seeds"][0]
    for k, network in enumerate(NETWORKS):
        row = [accuracy[k], *percentiles[2 * k:2 * k + 2]]
        lowest = 1.0
        for arm, (name, color) in ARMS.items():
            r = results[network][arm]   # failed and diverged runs: lines of their own
            draw_band(row[0], r["step"], r["test_acc_curve"], color, name,
                      outcomes=r["outcome"])
            lowest = min([lowest] + [a for curve in r["test_acc_curve"] for a in curve])
        row[0].set(xlabel="training step", ylabel="test accuracy (eval mode, noise off)",
                   title=f"{network.upper()}: test accuracy",
                   ylim=(max(0.0, int((lowest - 0.02) * 20) / 20), 1.0))
        percent_axis(row[0])
        for ax, arm, short in ((row[1], "bn", "BN"), (row[2], "bn_noise", "noisy BN")):
            r, color = results[network][arm], ARMS[arm][1]
            shown = {}
            for p, style, width in (("p85", ":", 2.2), ("p50", "-", 1.0), ("p15", "--", 1.0)):
                values = r[p][0]
                name = f"{p[1:]}th percentile"
                same = [q for q, other in shown.items()
                        if sum(abs(a - b) < 1e-6 for a, b in zip(values, other)) > len(values) / 2]
                if same:   # a conv unit's background pixels: many equal values
                    name += f" (mostly = {same[0][1:]}th)"
                shown[p] = values
                ax.plot(r["step"][0], values, style, color=color, lw=width, label=name)
            ax.set(xlabel="training step", ylabel="input of the first ReLU, unit 0",
                   title=f"{network.upper()}, {short}: training batch (seed {seed}, "
                         f"{r['outcome'][0]})")
        # one scale for both percentile panels, so their spreads compare at a glance
        shown = [v for a in ("bn", "bn_noise") for p in ("p15", "p85")
                 for v in results[network][a][p][0]] or [0.0]
        low, high = min(shown), max(shown)
        for ax in row[1:]:
            ax.set_ylim(low - 0.1 * (high - low) - 0.05, high + 0.6 * (high - low) + 0.05)
            ax.legend(fontsize=8.5, loc="upper right")
        for ax in row:
            ax.grid(alpha=0.3)
    figure_legend(top, accuracy)
    fig.suptitle("Noisy BN (Santurkar et al. 2018, Algorithm 1): BN, then a fresh random shift "
                 "and scale\nof every unit at every step (accuracy: mean over the ok seeds, band: "
                 "their range)")
    return [fig]
