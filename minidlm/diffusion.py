"""The masked-diffusion objective: forward process, training NELBO, Monte-Carlo evaluation.

Forward process (MDLM / LLaDA): draw t ~ U(0, 1) per sequence, set the masking probability
p = (1 - eps) t + eps, and replace each token by [MASK] independently with probability p.
The network predicts the clean tokens; the negative ELBO per token is

    NELBO = E_t [ 1/(B L) * sum_{masked i} -log p_theta(x0_i | x_t) / p ]          (LLaDA Eq. 3)

Only masked positions contribute, [MASK] is never a target, and the sum is normalised by ALL
B * L tokens. exp(NELBO) bounds the perplexity from above. t is stratified across the batch,
t_i = (u + i / B) mod 1, which lowers the variance of the estimate at no cost.

Training may draw t from a narrower range [t_min, t_max] and drop the 1/p weight (`train_loss`);
that loss is then NOT the bound (it leaves out the ends of the t range and reweights the rest)
and only serves to learn faster. Whatever the training loss, evaluation stays the true NELBO.

For evaluation, LLaDA's lower-variance estimator (arXiv 2502.09992, Eq. 6) draws the NUMBER of
masked tokens l uniformly from 1..L, masks l positions without replacement and weights the summed
cross-entropy by L / l; `evaluate_nelbo` stratifies l over each window's samples, with no fixed
grid that would over- or under-weight the steep ends of the loss curve.

The autoregressive baseline (`ar_loss`, `evaluate_nll`) is the same network with a causal mask
(model.py, `causal`) trained on the next token: the input is the window shifted right by one,
behind an end-of-text token (every window is cut anywhere in the stream, and a prompt starts with
end-of-text), and every one of the L tokens is a target. Its loss is the EXACT negative
log-likelihood of the window, where the diffusion model's NELBO is an upper bound on it.
"""
import math

import torch
import torch.nn.functional as F

EPS = 1e-3


def forward_process(x0, mask_id, generator=None, eps=EPS, t_min=0.0, t_max=1.0):
    """Mask a batch (B, L): returns x_t, the boolean mask and p (B, 1), with t stratified over
    [t_min, t_max] (the full [0, 1] for the NELBO)."""
    B, L = x0.shape
    u = torch.rand((), generator=generator, device=x0.device)
    t = t_min + (t_max - t_min) * ((u + torch.arange(B, device=x0.device) / B) % 1.0)
    p = ((1 - eps) * t + eps).unsqueeze(1)
    masked = torch.rand(B, L, generator=generator, device=x0.device) < p
    return torch.where(masked, mask_id, x0), masked, p


def train_loss(model, x0, mask_id, generator=None, t_min=0.0, t_max=1.0, weight_by_p=True, eps=EPS,
               rows=slice(None)):
    """Masked cross-entropy summed over masked positions, divided by all B * L tokens: the NELBO
    with the defaults; with a narrower t range or weight_by_p=False (plain masked CE, no 1/p) a
    training loss that is no longer the bound. rows: the rows of x0 this process trains on
    (distributed.py); the masks are drawn for the whole batch, so every process draws the same."""
    xt, masked, p = forward_process(x0, mask_id, generator, eps=eps, t_min=t_min, t_max=t_max)
    x0, xt, masked, p = x0[rows], xt[rows], masked[rows], p[rows]
    logits = model(xt)
    ce = F.cross_entropy(logits.flatten(0, 1).float(), x0.flatten(), reduction="none").view_as(x0)
    return (ce * masked / (p if weight_by_p else 1.0)).sum() / x0.numel()


nelbo_loss = train_loss  # with its defaults (t over [0, 1], the 1/p weight): the NELBO in nats


def shift_right(x0, bos_id: int):
    """The autoregressive input: (B, L) windows shifted right by one behind `bos_id`."""
    return torch.cat([torch.full_like(x0[:, :1], bos_id), x0[:, :-1]], dim=1)


def ar_loss(model, x0, bos_id: int, rows=slice(None)):
    """Next-token cross-entropy, mean over all B * L tokens: -log p(x0_i | bos, x0_<i). The logits
    at column i of the shifted input predict token i from what precedes it."""
    x0 = x0[rows]
    logits = model(shift_right(x0, bos_id))
    return F.cross_entropy(logits.flatten(0, 1).float(), x0.flatten())


@torch.no_grad()
def evaluate_nll(model, windows, bos_id: int, batch_size=32):
    """Exact NLL of validation windows (N, L) in nats per token under a causal model (ar_loss per
    window, no sampling): (mean, standard error across windows), as `evaluate_nelbo` returns them."""
    per_window = torch.cat([
        F.cross_entropy(model(shift_right(x0, bos_id)).transpose(1, 2).float(), x0, reduction="none").mean(1)
        for x0 in windows.split(batch_size)])
    N = len(per_window)
    se = per_window.std() / math.sqrt(N) if N > 1 else torch.tensor(float("nan"))
    return per_window.mean().item(), se.item()


@torch.no_grad()
def evaluate_nelbo(model, windows, mask_id, n_mc=16, batch_size=32, seed=0):
    """Monte-Carlo NELBO of validation windows (N, L) in nats per token.

    Returns (mean, standard error across windows). Window n's k-th sample masks
    l = 1 + floor((k + u_n) L / n_mc) random positions (one u_n ~ U[0, 1) per window, so each l in
    1..L is exactly equally likely and every window covers the whole range) and scores
    (L / l) * (sum of masked CE) / L. The standard error is that of the per-window means.
    A causal model is refused: it never learned to fill a [MASK], so the number would bound
    nothing it does (its exact NLL is `evaluate_nll`)."""
    if getattr(model, "cfg", None) is not None and model.cfg.causal:  # (a stand-in module may have no cfg)
        raise ValueError("an autoregressive model has an exact NLL, not a NELBO: use evaluate_nll")
    device = windows.device
    g = torch.Generator(device=device).manual_seed(seed)
    N, L = windows.shape
    u = torch.rand(N, generator=g, device=device)
    per_window = torch.zeros(N, device=device)
    for k in range(n_mc):
        counts = (1 + ((k + u) * L / n_mc).floor().long()).clamp(max=L)  # (N,) masked count l
        for start in range(0, N, batch_size):
            x0, l = windows[start:start + batch_size], counts[start:start + batch_size, None]
            scores = torch.rand(x0.shape, generator=g, device=device)
            masked = scores.argsort(dim=1).argsort(dim=1) < l  # exactly l random positions
            logits = model(torch.where(masked, mask_id, x0))
            ce = F.cross_entropy(logits.flatten(0, 1).float(), x0.flatten(), reduction="none")
            per_window[start:start + batch_size] += (ce.view_as(x0) * masked).sum(1) / l.squeeze(1)
    per_window /= n_mc
    se = per_window.std() / math.sqrt(N) if N > 1 else torch.tensor(float("nan"))
    return per_window.mean().item(), se.item()
