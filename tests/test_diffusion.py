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
    assert torch.all((t[1:] - t[:-1]) > 1 / B - 1e-5) if B > 1 else True


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
