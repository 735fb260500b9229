"""Where the training time goes: our loop against a DataLoader pipeline and the bare limit.

    python bench.py                   # about 10 minutes on a 2-core CPU
    python bench.py --steps 5 --repeats 1 --models mlp   # a smoke test

For each model, without and with BN, the training time of one epoch (600 steps of batch 100,
extrapolated from --steps steps, median of --repeats; ratios are the median of the ratios
within each round of measurements) measured three ways:
  loop        solver.train_one_epoch, exactly as the scripts run it (without the random shifts,
              which the other two do not do either)
  dataloader  what a student usually writes: torchvision MNIST with ToTensor and Normalize
              transforms through a DataLoader, loss.item() every step
  bare        forward, backward and SGD step over pre-batched tensors, nothing else
plus, for BN models, the bare step with torch.nn.BatchNorm instead of batchnorm.py's layers,
and the time to evaluate the 10k test set, as trained and with BN folded into the layer before
it (batchnorm.fold_batchnorm). Last, BN's backward in closed form against the chain rule step
by step (batchnorm.batch_norm_backward_by_steps). All in one process, the measurements taken in
turns, so the ratios are fair on a machine whose speed drifts.
"""
import argparse
import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

import batchnorm
import plumbing
import registry
import solver

STEPS_PER_EPOCH = 600
BATCH = 100


SGD_CONFIG = {"learning_rate": 0.01, "momentum": 0.9, "weight_decay": 1e-4}   # make_optimizer's


def with_torch_batchnorm(model):
    """The same model with each batchnorm.py layer replaced by torch.nn's (momentum 1 - ours)."""
    for name, child in model.named_children():
        if isinstance(child, batchnorm.BatchNorm):
            is_1d = isinstance(child, batchnorm.BatchNorm1d)
            torch_cls = nn.BatchNorm1d if is_1d else nn.BatchNorm2d
            setattr(model, name, torch_cls(child.num_features, eps=child.eps,
                                           momentum=1 - child.momentum))
        else:
            with_torch_batchnorm(child)
    return model


def time_loop(model, probe, train_x, train_y, steps):
    config = {"batch_size": BATCH, "disp_freq": 50, "augment_shift": 0}
    history = solver.new_history("bench", "none", 0, config, "cpu")
    optimizer = solver.make_optimizer(model, SGD_CONFIG)
    x, y = train_x[:steps * BATCH], train_y[:steps * BATCH]
    generator = torch.Generator().manual_seed(0)
    record = lambda iteration, model: probe.record_window(iteration)   # as solver.run does
    start = time.perf_counter()
    solver.train_one_epoch(model, optimizer, (x, y), config, 0, generator, history, record)
    return time.perf_counter() - start


def sgd_step(model, optimizer, images, labels):
    """Forward, backward and update: the work every way of training has to do."""
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def time_dataloader(model, data_dir, steps):
    dataset = torchvision.datasets.MNIST(data_dir, train=True, transform=transforms.Compose([
        transforms.ToTensor(), transforms.Normalize((solver.MNIST_MEAN,), (solver.MNIST_STD,))]))
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
    optimizer = solver.make_optimizer(model, SGD_CONFIG)
    model.train()
    start = time.perf_counter()
    for step, (images, labels) in enumerate(loader):
        if step == steps:
            break
        sgd_step(model, optimizer, images, labels).item()   # the usual running-loss bookkeeping
    return time.perf_counter() - start


def time_bare(model, batches):
    optimizer = solver.make_optimizer(model, SGD_CONFIG)
    model.train()
    start = time.perf_counter()
    for images, labels in batches:
        sgd_step(model, optimizer, images, labels)
    return time.perf_counter() - start


def time_evaluate(model, test_x, test_y, fold=False):
    """The 10k test set in eval mode; fold=True: with BN folded into the layer before it first."""
    if fold:
        model = batchnorm.fold_batchnorm(model)   # not timed: done once, after training
    start = time.perf_counter()
    solver.evaluate(model, test_x, test_y)
    return time.perf_counter() - start


BACKWARD_SHAPES = {"mlp (100, 128)": (100, 128), "cnn (100, 4, 28, 28)": (100, 4, 28, 28),
                   "resnet (100, 16, 28, 28)": (100, 16, 28, 28)}


def backward_table(repeats, calls=50):
    """BN's backward in closed form (BatchNormFunction, through autograd) against the chain
    rule step by step (batch_norm_backward_by_steps); each side includes its forward, ms per
    call."""
    rows = ["| BN input | closed form (ms) | step by step (ms) | step by step / closed form |",
            "| --- | ---: | ---: | ---: |"]
    for label, shape in BACKWARD_SHAPES.items():
        x = torch.randn(shape, requires_grad=True)
        weight = torch.rand(shape[1], requires_grad=True)
        bias = torch.zeros(shape[1], requires_grad=True)
        grad_y = torch.randn(shape)

        def closed_form():
            start = time.perf_counter()
            for _ in range(calls):
                y = batchnorm.BatchNormFunction.apply(x, weight, bias, 1e-5)[0]
                torch.autograd.grad(y, (x, weight, bias), grad_y)
            return (time.perf_counter() - start) / calls * 1e3

        def by_steps():
            start = time.perf_counter()
            for _ in range(calls):
                batchnorm.batch_norm_backward_by_steps(grad_y, x.detach(), weight.detach())
            return (time.perf_counter() - start) / calls * 1e3

        t = interleaved_times({"closed": closed_form, "steps": by_steps}, repeats)
        rows.append(f"| {label} | {statistics.median(t['closed']):.3f} "
                    f"| {statistics.median(t['steps']):.3f} "
                    f"| {median_ratio(t['steps'], t['closed']):.2f} |")
    return rows


def interleaved_times(measures, repeats):
    """`repeats` times of each measurement, taken in turns so that all see the same machine.

    Run one after the other, a slow phase of a shared CPU (its speed drifts over seconds) would
    land on one of them and skew the ratio; in turns, round i of every measurement sees about
    the same speed, so a ratio is taken within each round.
    """
    for measure in measures.values():
        measure()   # warm-up: first calls allocate and pick kernels
    times = {name: [] for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            times[name].append(measure())
    return times


def median_ratio(numerators, denominators):
    """The median over rounds of the ratio within each round."""
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=plumbing.positive_int, default=100,
                        help=f"training steps per measurement, at most {STEPS_PER_EPOCH}")
    parser.add_argument("--repeats", type=plumbing.positive_int, default=5,
                        help="measurements per number (median)")
    parser.add_argument("--models", nargs="+", choices=registry.MODEL_NAMES,
                        default=list(registry.MODEL_NAMES))
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--threads", type=plumbing.positive_int, default=torch.get_num_threads(),
                        help="torch's intra-op threads; the default is torch's choice here")
    parser.add_argument("--default-malloc", action="store_true",
                        help="skip plumbing.keep_freed_memory_for_reuse(), to see what it saves")
    args = parser.parse_args(argv)
    if args.steps > STEPS_PER_EPOCH:
        parser.error(f"--steps {args.steps}: at most {STEPS_PER_EPOCH}, one epoch of the "
                     "training set")
    torch.set_num_threads(args.threads)
    if not args.default_malloc:
        plumbing.keep_freed_memory_for_reuse()   # as the scripts do

    try:
        train_x, train_y, test_x, test_y = solver.load_mnist(args.data_dir, torch.device("cpu"))
    except plumbing.SolverError as error:
        sys.exit(f"error: {error}")
    if args.steps * BATCH > len(train_x):
        sys.exit(f"error: --steps {args.steps} needs {args.steps * BATCH} training images, "
                 f"{args.data_dir} has {len(train_x)}; use fewer --steps")
    batches = [(train_x[i * BATCH:(i + 1) * BATCH], train_y[i * BATCH:(i + 1) * BATCH])
               for i in range(args.steps)]
    per_epoch = STEPS_PER_EPOCH / args.steps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; seconds per epoch of "
          f"{STEPS_PER_EPOCH} steps, from {args.steps} steps, median of {args.repeats}\n")
    rows = ["| model | loop (s/epoch) | dataloader | bare | loop / bare | dataloader / loop "
            "| our BN / torch BN (step) | eval 10k (s) | eval 10k, BN folded (s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in args.models:
        build_model = registry.model_script(name).build_model
        for norm in ("none", "bn"):
            bn = norm == "bn"
            torch.manual_seed(0)
            model = build_model(norm)
            # The loop trains a copy, so that the activation probe's hook stays off the bare step.
            loop_model = copy.deepcopy(model)
            probe = solver.InputProbe(loop_model)
            # In each round the two sides of a ratio run back to back (bare between the loop and
            # torch's BN), so a change of machine speed between them is as small as it can be.
            measures = {
                "loop": lambda: time_loop(loop_model, probe, train_x, train_y, args.steps),
                "bare": lambda: time_bare(model, batches)}
            if bn:
                torch_bn_model = with_torch_batchnorm(build_model(norm))
                measures["bare, torch BN"] = lambda: time_bare(torch_bn_model, batches)
            measures["dataloader"] = lambda: time_dataloader(model, args.data_dir, args.steps)
            measures["eval"] = lambda: time_evaluate(model, test_x, test_y)
            if bn:
                measures["eval, folded"] = lambda: time_evaluate(model, test_x, test_y, fold=True)
            t = interleaved_times(measures, args.repeats)
            loop, pipeline, bare = (statistics.median(t[key]) * per_epoch
                                    for key in ("loop", "dataloader", "bare"))
            bn_ratio = f"{median_ratio(t['bare'], t['bare, torch BN']):.2f}" if bn else "-"
            folded = f"{statistics.median(t['eval, folded']):.3f}" if bn else "-"
            rows.append(f"| {name}{' + BN' if bn else ''} | {loop:.2f} | {pipeline:.2f} "
                        f"| {bare:.2f} | {median_ratio(t['loop'], t['bare']):.2f} "
                        f"| {median_ratio(t['dataloader'], t['loop']):.1f} "
                        f"| {bn_ratio} | {statistics.median(t['eval']):.3f} | {folded} |")
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows) + "\n\n" + "\n".join(backward_table(args.repeats)))


if __name__ == "__main__":
    main()
