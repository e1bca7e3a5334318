"""The masked-diffusion objective: forward process, training NELBO, Monte-Carlo evaluation.

Forward process (MDLM / LLaDA): draw t ~ U(0, 1) per sequence, set the masking probability
p = (1 - eps) t + eps, and replace each token by [MASK] independently with probability p.
The network predicts the clean tokens; the negative ELBO per token is

    NELBO = E_t [ 1/(B L) * sum_{masked i} -log p_theta(x0_i | x_t) / p ]          (LLaDA Eq. 3)

Only masked positions contribute, [MASK] is never a target, and the sum is normalised by ALL
B * L tokens. exp(NELBO) bounds the perplexity from above. t is stratified across the batch,
t_i = (u + i / B) mod 1, which lowers the variance of the estimate at no cost.

For evaluation, LLaDA's lower-variance estimator (arXiv 2502.09992, Eq. 6) draws the NUMBER of
masked tokens l uniformly from 1..L (spread evenly over the Monte-Carlo samples), masks l
positions without replacement and weights the summed cross-entropy by L / l.
"""
import math

import torch
import torch.nn.functional as F

EPS = 1e-3


def forward_process(x0, mask_id, generator=None, eps=EPS):
    """Mask a batch (B, L): returns x_t, the boolean mask and p (B, 1), with stratified t."""
    B, L = x0.shape
    u = torch.rand((), generator=generator, device=x0.device)
    t = (u + torch.arange(B, device=x0.device) / B) % 1.0
    p = ((1 - eps) * t + eps).unsqueeze(1)
    masked = torch.rand(B, L, generator=generator, device=x0.device) < p
    return torch.where(masked, mask_id, x0), masked, p


def nelbo_loss(model, x0, mask_id, generator=None):
    """The training loss: per-token NELBO in nats (1/p weighting, all tokens in the mean)."""
    xt, masked, p = forward_process(x0, mask_id, generator)
    logits = model(xt)
    ce = F.cross_entropy(logits.flatten(0, 1).float(), x0.flatten(), reduction="none")
    return (ce.view_as(x0) * masked / p).sum() / x0.numel()


@torch.no_grad()
def evaluate_nelbo(model, windows, mask_id, n_mc=16, batch_size=32, seed=0):
    """Monte-Carlo NELBO of validation windows (N, L) in nats per token.

    Returns (mean, standard error across windows). Each window gets n_mc samples whose masked
    counts l are spread evenly over 1..L; each sample scores (1/l) * sum of masked CE."""
    device = windows.device
    g = torch.Generator(device=device).manual_seed(seed)
    N, L = windows.shape
    counts = torch.linspace(1, L, n_mc, device=device).round().long()  # l per MC sample
    per_window = torch.zeros(N, device=device)
    for k in range(n_mc):
        l = int(counts[k])
        for start in range(0, N, batch_size):
            x0 = windows[start:start + batch_size]
            scores = torch.rand(x0.shape, generator=g, device=device)
            masked = scores.argsort(dim=1).argsort(dim=1) < l  # exactly l random positions
            logits = model(torch.where(masked, mask_id, x0))
            ce = F.cross_entropy(logits.flatten(0, 1).float(), x0.flatten(), reduction="none")
            per_window[start:start + batch_size] += (ce.view_as(x0) * masked).sum(1) / l
    per_window /= n_mc
    se = per_window.std() / math.sqrt(N) if N > 1 else torch.tensor(float("nan"))
    return per_window.mean().item(), se.item()


def describe_nelbo(nats: float, se: float) -> str:
    """One line: bits per token and the perplexity bound, each with its standard error."""
    bits, bits_se = nats / math.log(2), se / math.log(2)
    return (f"val NELBO {bits:.3f} +- {bits_se:.3f} bits/token "
            f"(perplexity <= {math.exp(nats):.2f} +- {math.exp(nats) * se:.2f})")
