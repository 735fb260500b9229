"""Batch Normalization written by hand: the one layer of this lesson not taken from torch.nn.

Ioffe & Szegedy (2015), in the report's notation. For each channel c, over the m values that
channel takes in a mini-batch (m = N for input (N, C); m = N*H*W for input (N, C, H, W)):

Training, eq. 2.1
    mu_B      = (1/m) * sum(x)                      mini-batch mean
    sigma_B^2 = (1/m) * sum((x - mu_B)^2)           mini-batch variance (biased: divide by m)
    BN(x)     = gamma * (x - mu_B) / sqrt(sigma_B^2 + eps) + beta

Running estimates, eq. 2.2 (the report's convention, momentum = 0.9 by default)
    running_mean = momentum * running_mean + (1 - momentum) * mu_B
    running_var  = momentum * running_var  + (1 - momentum) * sigma_B^2 * m / (m - 1)

    torch.nn.BatchNorm writes the same rule the other way round: its `momentum` (default 0.1)
    is the weight of the *new* batch statistic. Ours with momentum 0.9 is torch's with 0.1;
    in general ours(momentum) == torch(momentum = 1 - momentum).

Evaluation (after .eval())
    BN(x) = gamma * (x - running_mean) / sqrt(running_var + eps) + beta
    Nothing depends on the rest of the batch, so one test digit gets the same answer alone or in
    a batch of 10,000, and the running estimates stay where training left them.

The backward pass of eq. 2.1 is derived by hand in `BatchNormFunction` below; `batch_norm_reference`
is the same forward written straight from eq. 2.1 for autograd to differentiate, kept for
comparison (test_batchnorm.py shows both agree with each other and with torch.nn.BatchNorm).

The `# exercise N` comments mark what `python exercises.py make DIR` leaves for students to write
(docs/exercises.md); checks.py and grade.py check it.

BN's relatives (LayerNorm, GroupNorm, Batch Renormalization) and the layers by the name that
`--norm` uses are in norms.py, built on the pieces here.
"""
import copy

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def stat_shape_and_dims(x):
    """Statistics are per channel (dim 1): reduce over every other axis, broadcast back as
    (1, C, 1, ...)."""
    reduce_dims = [0] + list(range(2, x.dim()))
    stat_shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    return stat_shape, reduce_dims


def compute_dtype(x):
    """The dtype BN computes in for input x: float32 for bfloat16 or float16 input, as torch's
    BN does, x's own dtype for float32 or float64.

    With 8 bits of precision (bfloat16), a mean over thousands of values, or x - mu_B for x
    close to mu_B, loses most of its digits; in float32 they are exact enough, and only the
    output is rounded back to x's dtype, once."""
    return torch.promote_types(x.dtype, torch.float32)


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch normalization (eq. 2.1) with a backward pass derived by hand.

    Forward, per channel:  x_hat = (x - mu_B) * inv_std,  inv_std = 1 / sqrt(sigma_B^2 + eps),
                           y = gamma * x_hat + beta.

    Backward. Let g = dL/dy (the upstream gradient) and sums run over the m values of a channel.
    beta and gamma enter y like the bias and weight of a per-channel linear map:
        dL/dbeta  = sum(g)
        dL/dgamma = sum(g * x_hat)
    For x, the chain rule has three paths: directly through x, and through mu_B and sigma_B^2,
    which every x of the channel feeds. Writing g_hat = gamma * g = dL/dx_hat:
        dL/dsigma^2 = sum(g_hat * (x - mu_B)) * (-1/2) * inv_std^3
        dL/dmu_B    = -inv_std * sum(g_hat)           (the sigma^2 path contributes 0, since
                                                       sum(x - mu_B) = 0)
        dL/dx       = g_hat * inv_std + dL/dsigma^2 * 2 (x - mu_B) / m + dL/dmu_B / m
    which collapses to the closed form computed below:
        dL/dx = gamma * inv_std / m * (m * g - sum(g) - x_hat * sum(g * x_hat))
    `batch_norm_backward_by_steps` runs the four lines above one intermediate at a time, as a
    derivation to execute and check; the closed form is the one used because it needs three
    passes over the data and no buffer beyond the one it returns, where the steps make five
    full-size temporaries (bench.py times both).

    With detach_stats=True, mu_B and sigma_B^2 are treated as constants (the BN paper's
    section 2 warns against it): only the direct path is left, dL/dx = gamma * inv_std * g.

    Returns y and, as non-differentiable extras, the batch mean and biased variance that the
    layer needs for its running estimates (computed once, here, rather than a second time).
    bfloat16 or float16 x is normalised in float32 (`compute_dtype`): the statistics come back
    in float32, y and dL/dx in x's dtype, as torch's BN. For float32 or float64 x nothing is
    converted.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, detach_stats=False):
        stat_shape, reduce_dims = stat_shape_and_dims(x)
        input_dtype = x.dtype
        x = x.to(compute_dtype(x))      # float32 x (or float64) is returned as it is: no copy
        # exercise 1: mean, var (biased sigma_B^2), inv_std, x_hat, y; save x_hat, weight, inv_std
        # Two passes (mean, then the mean of squared deviations) rather than torch.var_mean,
        # whose Welford reduction over several axes is slow on CPU (docs/performance-notes.md).
        mean = x.mean(dim=reduce_dims, keepdim=True)                   # mu_B
        x_hat = x - mean                                               # centred, normalised below
        var = x_hat.square().mean(dim=reduce_dims, keepdim=True)       # sigma_B^2 (biased)
        inv_std = torch.rsqrt(var + eps)
        x_hat.mul_(inv_std)                            # (x - mu_B) / sqrt(sigma_B^2 + eps)
        y = (x_hat * weight.view(stat_shape)).add_(bias.view(stat_shape))   # gamma * x_hat + beta
        # x_hat (not x) is what backward needs; keeping it costs the same memory as keeping x.
        ctx.save_for_backward(x_hat, weight, inv_std)
        # end of exercise 1
        ctx.detach_stats = detach_stats
        ctx.input_dtype = input_dtype
        batch_mean, batch_var = mean.view(-1), var.view(-1)
        ctx.mark_non_differentiable(batch_mean, batch_var)
        return y.to(input_dtype), batch_mean, batch_var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x_hat, weight, inv_std = ctx.saved_tensors
        stat_shape, reduce_dims = stat_shape_and_dims(x_hat)
        m = x_hat.numel() // x_hat.shape[1]
        g = grad_y.to(x_hat.dtype)   # dL/dy in the forward's compute dtype (float32: g is grad_y)
        # exercise 3: grad_beta, grad_gamma, grad_x in closed form (ctx.detach_stats: direct path)

        grad_beta = g.sum(dim=reduce_dims)                    # dL/dbeta  = sum(g)
        g_x_hat = g * x_hat                                   # g * x_hat, wanted for its sum
        grad_gamma = g_x_hat.sum(dim=reduce_dims)             # dL/dgamma = sum(g * x_hat)

        grad_x = None
        if ctx.needs_input_grad[0]:
            gamma_inv_std = weight.view(stat_shape) * inv_std   # gamma * inv_std, per channel
            if ctx.detach_stats:   # the direct path only: dL/dx = gamma * inv_std * g
                grad_x = g * gamma_inv_std
            else:
                # The closed form, with sum(g) = dL/dbeta and sum(g * x_hat) = dL/dgamma:
                #   dL/dx = gamma * inv_std / m * (m * g - sum(g) - x_hat * sum(g * x_hat))
                #         = gamma_inv_std * (-x_hat * sum(g * x_hat) / m  +  g  -  sum(g) / m),
                # its three terms (each times gamma_inv_std) added in that order into g_x_hat's
                # memory, free now that its sum is taken: every new buffer of this size costs
                # time (docs/performance-notes.md).
                x_hat_coefficient = gamma_inv_std * (grad_gamma / -m).view(stat_shape)
                grad_x = torch.mul(x_hat, x_hat_coefficient, out=g_x_hat)  # -x_hat*sum(g*x_hat)/m
                grad_x.addcmul_(g, gamma_inv_std)                          # + g
                grad_x.sub_(gamma_inv_std * (grad_beta / m).view(stat_shape))   # - sum(g) / m
            grad_x = grad_x.to(ctx.input_dtype)   # x's dtype; for float32 x, grad_x itself
        # end of exercise 3
        return grad_x, grad_gamma, grad_beta, None, None


def batch_norm_backward_by_steps(grad_y, x, weight, eps=1e-5):
    """The backward of eq. 2.1 one intermediate at a time, as BatchNormFunction derives it.

    Returns (dL/dx, dL/dgamma, dL/dbeta) for upstream gradient grad_y = dL/dy. The lesson's
    version of CS231n's first backward: each line is one line of the chain rule.
    """
    stat_shape, reduce_dims = stat_shape_and_dims(x)
    m = x.numel() // x.shape[1]
    total = lambda t: t.sum(dim=reduce_dims, keepdim=True)    # sum over a channel's m values
    gamma = weight.view(stat_shape)
    # exercise 2: the forward again, keeping each intermediate; then each gradient, a line each
    # the forward again, keeping every intermediate
    mu = total(x) / m                                                   # mu_B
    centred = x - mu                                                    # x - mu_B
    var = total(centred ** 2) / m                                       # sigma_B^2
    inv_std = 1 / torch.sqrt(var + eps)
    x_hat = centred * inv_std
    # backward, from y = gamma * x_hat + beta down to x
    grad_bias = total(grad_y)                                           # dL/dbeta
    grad_weight = total(grad_y * x_hat)                                 # dL/dgamma
    grad_x_hat = grad_y * gamma                                         # dL/dx_hat
    grad_var = total(grad_x_hat * centred) * -0.5 * inv_std ** 3        # dL/dsigma^2
    grad_mu = total(-grad_x_hat * inv_std) + grad_var * total(-2 * centred) / m   # dL/dmu_B
    grad_x = grad_x_hat * inv_std + grad_var * 2 * centred / m + grad_mu / m       # dL/dx
    # end of exercise 2
    return grad_x, grad_weight.view(-1), grad_bias.view(-1)


def batch_norm_reference(x, weight, bias, eps=1e-5):
    """eq. 2.1 exactly as written, differentiated by autograd: the yardstick for
    BatchNormFunction."""
    stat_shape, reduce_dims = stat_shape_and_dims(x)
    mu = x.mean(dim=reduce_dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=reduce_dims, keepdim=True)
    return weight.view(stat_shape) * (x - mu) / torch.sqrt(var + eps) + bias.view(stat_shape)


class BatchNorm(nn.Module):
    """What BatchNorm1d and BatchNorm2d share (isinstance(m, BatchNorm) finds either of them).

    They differ only in the input rank they accept. The state is torch.nn.BatchNorm's, name for
    name (weight, bias, running_mean, running_var, num_batches_tracked), so a state_dict loads
    from ours into torch's and back with strict=True, every value unchanged. `momentum` is not
    in the state, so loading translates nothing: ours stays the report's convention (running =
    0.9 * running + 0.1 * batch), which is the rule torch's momentum=0.1 names.

    bfloat16 or float16 input (under torch.autocast, say, after a Linear or Conv2d) is
    normalised in float32, and the running estimates stay float32; the output and dL/dx come
    back in the input's dtype, as torch's BN does.
    """

    input_rank = None   # set by the subclasses
    input_layout = None

    def __init__(self, num_features, eps=1e-5, momentum=0.9, detach_stats=False):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.detach_stats = detach_stats   # True: the backward treats mu_B, sigma_B^2 as constants
        self.weight = nn.Parameter(torch.ones(num_features))    # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))     # beta
        # Buffers, not parameters: saved in state_dict() and moved by .to(), but not trained.
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        # Training-mode forwards (batches) so far, counted as torch.nn.BatchNorm counts them.
        # Eq. 2.2 does not need it (its momentum is fixed); it is kept so the state matches
        # torch's, and Batch Renormalization's warm-up (norms.py) reads it.
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def extra_repr(self):
        detach = ", detach_stats=True" if self.detach_stats else ""
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}{detach}"

    def _check_input(self, x):
        name = type(self).__name__
        if x.dim() != self.input_rank:
            raise ValueError(f"{name} expects a {self.input_rank}-D input {self.input_layout}, "
                             f"got a {x.dim()}-D input of shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{name}({self.num_features}) expects {self.num_features} channels "
                             f"in dim 1, got input of shape {tuple(x.shape)}")
        if self.training and x.numel() // x.shape[1] < 2:
            raise ValueError(f"{name} in training needs more than one value per channel to compute "
                             f"a batch variance, got input of shape {tuple(x.shape)}; "
                             "use a larger batch or call .eval()")

    def forward(self, x):
        self._check_input(x)
        # exercise 4: training: BatchNormFunction, then eq. 2.2's update; eval: running estimates
        if not self.training:
            return self._normalize_with_running_stats(x)

        y, batch_mean, batch_var = BatchNormFunction.apply(x, self.weight, self.bias, self.eps,
                                                           self.detach_stats)
        self.update_running_estimates(batch_mean, batch_var, x.numel() // x.shape[1])
        return y
        # end of exercise 4

    @torch.no_grad()
    def update_running_estimates(self, batch_mean, batch_var, m):
        """eq. 2.2, from a training batch's mean and biased variance over m values a channel,
        and one more batch in num_batches_tracked."""
        # exercise 4: eq. 2.2 for running_mean and running_var, in place
        # The running variance estimates the population variance used at test time, so it
        # takes the unbiased estimate m/(m-1) * sigma_B^2, as torch.nn.BatchNorm does;
        # eq. 2.1 itself normalises with the biased sigma_B^2.
        unbiased_var = batch_var * (m / (m - 1))
        self.running_mean.mul_(self.momentum).add_(batch_mean, alpha=1 - self.momentum)
        self.running_var.mul_(self.momentum).add_(unbiased_var, alpha=1 - self.momentum)
        # end of exercise 4
        self.num_batches_tracked.add_(1)

    def eval_scale_and_shift(self):
        """Evaluation's BN as a fixed affine map per channel, y = scale * x + shift:
        scale = gamma / sqrt(running_var + eps), shift = beta - running_mean * scale."""
        # exercise 4: scale and shift, per channel
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale
        # end of exercise 4

    def _normalize_with_running_stats(self, x):
        """gamma * (x - running_mean) / sqrt(running_var + eps) + beta, as x * scale + shift."""
        stat_shape, _ = stat_shape_and_dims(x)
        scale, shift = self.eval_scale_and_shift()
        # Two passes over x (a multiply, then an add in place); torch.addcmul does it in one but,
        # with both per-channel operands broadcast, is slower (docs/performance-notes.md).
        # bfloat16/float16 x in float32, rounded back once; float32 x is not converted at all.
        y = (x.to(compute_dtype(x)) * scale.view(stat_shape)).add_(shift.view(stat_shape))
        return y.to(x.dtype)


class BatchNorm1d(BatchNorm):
    """Batch normalization of input (N, C): statistics per feature over the batch."""
    input_rank = 2
    input_layout = "(N, C)"


class BatchNorm2d(BatchNorm):
    """Batch normalization of input (N, C, H, W): statistics per channel over N, H and W."""
    input_rank = 4
    input_layout = "(N, C, H, W)"


# ----------------------------------------------------------------------------- after training

def batchnorm_layers(model):
    return [m for m in model.modules() if isinstance(m, BatchNorm)]


@torch.no_grad()
def fold_batchnorm(model):
    """A copy of `model` for inference in which BN is merged into the layer before it.

    In evaluation BN is a fixed affine map per channel (BN paper, Algorithm 2):
        y = scale * x + (beta - scale * running_mean),  scale = gamma / sqrt(running_var + eps)
    so a BN that directly follows an nn.Linear or nn.Conv2d in an nn.Sequential folds into it:
        W' = scale * W (per output channel),   b' = (b - running_mean) * scale + beta
    and is replaced by nn.Identity(). The copy is in eval mode; `model` is left as it was.
    """
    folded = copy.deepcopy(model).eval()
    for sequential in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(sequential) - 1):
            layer, bn = sequential[i], sequential[i + 1]
            if isinstance(bn, BatchNorm) and isinstance(layer, (nn.Linear, nn.Conv2d)):
                # exercise 5: W' and b' into layer (a new bias if it has none), nn.Identity() for bn
                scale, shift = bn.eval_scale_and_shift()
                layer.weight.mul_(scale.view(-1, *[1] * (layer.weight.dim() - 1)))
                bias = layer.bias if layer.bias is not None else 0
                # (b - running_mean) * scale + beta
                layer.bias = nn.Parameter(bias * scale + shift)
                sequential[i + 1] = nn.Identity()
                # end of exercise 5
    return folded


@torch.no_grad()
def recalibrate(model, batches):
    """Population statistics for every BN layer, the BN paper's Algorithm 2 (steps 8-11).

    The equal-sized batches go through the model with batch statistics, as in training; then
    each layer's running_mean becomes the mean of its batch means, E[x], and running_var
    m / (m - 1) times the mean of its batch variances, Var[x]. No parameter changes. This
    replaces the momentum average, which weights the last batches most, and by weights that
    were still moving. Returns the model in eval mode.

    Each batch is a training-mode forward, so num_batches_tracked counts it, as torch's layer
    given the same batches would: the counter stays the number of batches the layer has seen
    in training mode (a Batch Renorm warm-up it drives does not restart).
    """
    layers = batchnorm_layers(model)
    sums = {layer: [0, 0, 0] for layer in layers}   # sum of means, sum of variances, batches

    def record(layer, inputs):
        x = inputs[0].to(compute_dtype(inputs[0]))   # float32 statistics, as in training
        stat_shape, reduce_dims = stat_shape_and_dims(x)
        mean = x.mean(dim=reduce_dims)
        var = (x - mean.view(stat_shape)).square().mean(dim=reduce_dims)   # biased, as eq. 2.1
        sums[layer][0] += mean
        sums[layer][1] += var
        sums[layer][2] += 1
        layer.values_per_channel = x.numel() // x.shape[1]

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    model.train()
    try:
        for batch in batches:
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    for layer in layers:
        mean_sum, var_sum, count = sums[layer]
        m = layer.values_per_channel
        layer.running_mean.copy_(mean_sum / count)
        layer.running_var.copy_(var_sum / count * (m / (m - 1)))
        del layer.values_per_channel
    return model.eval()
