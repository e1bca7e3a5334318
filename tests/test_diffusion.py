"""The objective: masking follows t, only masked positions count, and the estimator is calibrated."""
import math

import torch
from hypothesis import given, strategies as st

from conftest import MASK_ID, VOCAB
from minidlm.diffusion import EPS, evaluate_nelbo, forward_process, nelbo_loss


@given(seed=st.integers(0, 10_000), B=st.integers(1, 16))
def test_masking_rate_follows_t(seed, B):
    x0 = torch.zeros(B, 4000, dtype=torch.long)
    xt, masked, p = forward_process(x0, MASK_ID, torch.Generator().manual_seed(seed))
    assert torch.equal(masked, xt == MASK_ID)
    assert torch.all((p >= EPS) & (p <= 1))
    rate = masked.float().mean(1, keepdim=True)
    assert torch.all((rate - p).abs() < 5 * torch.sqrt(p * (1 - p) / 4000) + 1e-3)
    t = ((p.squeeze(1) - EPS) / (1 - EPS)).sort().values  # stratified: one t in each 1/B slice
    if B > 1:
        assert torch.all((t[1:] - t[:-1]) > 1 / B - 1e-5)


class LogitsSpy(torch.nn.Module):
    """Returns fixed logits, optionally scrambled at the positions that were NOT masked."""

    def __init__(self, logits, scramble_unmasked):
        super().__init__()
        self.logits, self.scramble = logits, scramble_unmasked

    def forward(self, xt):
        out = self.logits.clone()
        if self.scramble:
            out[xt != MASK_ID] = torch.randn_like(out[xt != MASK_ID]) * 100
        return out


@given(seed=st.integers(0, 10_000))
def test_loss_depends_only_on_masked_positions(seed):
    x0 = torch.randint(0, MASK_ID, (4, 32), generator=torch.Generator().manual_seed(seed))
    logits = torch.randn(4, 32, VOCAB, generator=torch.Generator().manual_seed(seed + 1))
    a = nelbo_loss(LogitsSpy(logits, False), x0, MASK_ID, torch.Generator().manual_seed(seed))
    b = nelbo_loss(LogitsSpy(logits, True), x0, MASK_ID, torch.Generator().manual_seed(seed))
    assert torch.allclose(a, b)


def test_uniform_model_scores_exactly_log_vocab():
    windows = torch.randint(0, MASK_ID, (5, 24))
    uniform = lambda xt: torch.zeros(*xt.shape, VOCAB)
    nats, se = evaluate_nelbo(uniform, windows, MASK_ID, n_mc=4)
    assert math.isclose(nats, math.log(VOCAB), rel_tol=1e-6) and se < 1e-6


def test_training_loss_is_an_unbiased_estimate_of_the_nelbo():
    windows = torch.randint(0, MASK_ID, (8, 16))
    uniform = lambda xt: torch.zeros(*xt.shape, VOCAB)
    g = torch.Generator().manual_seed(0)
    mean = sum(nelbo_loss(uniform, windows, MASK_ID, g) for _ in range(400)) / 400
    assert abs(mean.item() - math.log(VOCAB)) < 0.05 * math.log(VOCAB)


class CountingModel(torch.nn.Module):
    """Every window is token 0; the model's CE on each masked token depends only on how many
    tokens are masked, steeply and convexly: CE(l) = 1 + 6 (l / L)^4 nats. The exhaustive average
    over l = 1..L (what Eq. 6 estimates) is then known exactly, and a fixed grid of l is biased."""

    @staticmethod
    def ce(l, L):
        return 1.0 + 6.0 * (l / L) ** 4

    def forward(self, xt):
        L = xt.shape[1]
        l = (xt == MASK_ID).sum(1, keepdim=True).float()
        target_logit = -self.ce(l, L)  # with logit 0 on a huge pool of other tokens ...
        logits = torch.zeros(*xt.shape, VOCAB)
        logits[..., 0] = target_logit
        # ... CE = logsumexp - target; solve for the pool logit that makes CE exactly ce(l)
        pool = torch.log(torch.exp(torch.zeros_like(target_logit)) - torch.exp(target_logit))
        logits[..., 1:] = pool.unsqueeze(-1) - math.log(VOCAB - 1)
        return logits


@given(L=st.integers(4, 40), n_mc=st.integers(1, 9))
def test_estimator_mean_is_the_exhaustive_average_over_l(L, n_mc):
    model, N = CountingModel(), 3000
    exact = sum(CountingModel.ce(l, L) for l in range(1, L + 1)) / L
    nats, se = evaluate_nelbo(model, torch.zeros(N, L, dtype=torch.long), MASK_ID, n_mc=n_mc,
                              batch_size=N, seed=L * 10 + n_mc)
    assert abs(nats - exact) < 5 * se + 1e-4


def test_the_exhaustive_test_would_catch_a_fixed_grid():
    """The old estimator spread l over linspace(1, L, n_mc), which includes l = L: on this model
    it reads far more than the tolerance above too high (an estimator test needs that power)."""
    L, n_mc = 32, 8
    exact = sum(CountingModel.ce(l, L) for l in range(1, L + 1)) / L
    grid = CountingModel.ce(torch.linspace(1, L, n_mc).round(), L).mean().item()
    nats, se = evaluate_nelbo(CountingModel(), torch.zeros(3000, L, dtype=torch.long), MASK_ID,
                              n_mc=n_mc, batch_size=3000)
    assert grid - exact > 20 * se and abs(nats - exact) < 5 * se


def test_every_window_covers_the_whole_range_of_l():
    """Stratified: with n_mc = L every window masks each count 1..L exactly once."""
    L, seen = 12, []
    spy = lambda xt: seen.append((xt == MASK_ID).sum(1)) or torch.zeros(*xt.shape, VOCAB)
    evaluate_nelbo(spy, torch.zeros(7, L, dtype=torch.long), MASK_ID, n_mc=L, batch_size=7)
    counts = torch.stack(seen, 1)  # (window, sample)
    assert torch.equal(counts.sort(1).values, torch.arange(1, L + 1).expand(7, L))


@given(eps=st.floats(0.01, 0.5), seed=st.integers(0, 99))
def test_masking_rate_never_falls_below_eps(eps, seed):
    """p = (1 - eps) t + eps: at t = 0 every row still masks at rate eps, and p never goes lower."""
    x0 = torch.zeros(64, 512, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    _, masked, p = forward_process(x0, MASK_ID, gen, eps=eps, t_min=0.0, t_max=0.0)
    assert torch.allclose(p, torch.full_like(p, eps))
    assert abs(masked.float().mean().item() - eps) < 5 * math.sqrt(eps * (1 - eps) / masked.numel())
    _, _, p = forward_process(x0, MASK_ID, gen, eps=eps)
    assert (p >= eps).all() and (p <= 1).all()
