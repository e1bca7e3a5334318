"""The optimizers and the schedule of train_tiny.py."""
import torch
import torch.optim._muon as library
from hypothesis import given, strategies as st

from conftest import tiny_model
from minidlm.optim import Muon, build_optimizers, lr_factor, newton_schulz_float32

COEFFS = (3.4445, -4.775, 2.0315)


@given(rows=st.integers(2, 48), cols=st.integers(2, 48), seed=st.integers(0, 1000))
def test_float32_newton_schulz_is_the_library_iteration_without_bf16_rounding(rows, cols, seed):
    g = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    ours = newton_schulz_float32(g, COEFFS, 5, 1e-7)
    theirs = library._zeropower_via_newtonschulz(g, COEFFS, 5, 1e-7).float()
    assert ours.dtype == torch.float32 and ours.shape == g.shape
    assert (ours - theirs).norm() <= 0.05 * theirs.norm()  # bf16 keeps ~3 significant digits


def test_muon_step_on_the_cpu_is_the_library_step_up_to_that_rounding():
    torch.manual_seed(0)
    w = torch.randn(24, 16)
    grad = torch.randn(24, 16)
    results = []
    for cls in (Muon, torch.optim.Muon):
        p = torch.nn.Parameter(w.clone())
        opt = cls([p], lr=0.02, weight_decay=0.1)
        p.grad = grad.clone()
        opt.step()
        results.append(p.detach() - w)
    assert (results[0] - results[1]).norm() <= 0.05 * results[1].norm()
    assert library._zeropower_via_newtonschulz is not newton_schulz_float32  # restored after the step


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = tiny_model(sink=True).float()
    adamw, muon = build_optimizers(model, "muon", 1e-3, 0.02, 0.1)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in in_muon) == (p.dim() == 2 and name.startswith("blocks.")), name
    n_adamw = sum(len(g["params"]) for g in adamw.param_groups)
    assert n_adamw + len(in_muon) == len(list(model.parameters()))


@given(warmup=st.integers(0, 50), step=st.integers(0, 1000), progress=st.floats(0, 2),
       schedule=st.sampled_from(["cosine", "wsd"]), cooldown=st.floats(0, 1))
def test_lr_factor_stays_within_zero_and_one(warmup, step, progress, schedule, cooldown):
    assert 0.0 <= lr_factor(progress, step, warmup, schedule, cooldown) <= 1.0


def test_wsd_is_flat_then_decays_linearly_to_zero():
    f = lambda progress: lr_factor(progress, 10_000, 0, "wsd", 0.3)
    assert f(0.0) == f(0.69) == 1.0
    assert abs(f(0.85) - 0.5) < 1e-9 and f(1.0) == 0.0
