"""The optimizers, the schedule and the arithmetic of train_tiny.py."""
import pytest
import torch
import torch.optim._muon as library
from hypothesis import given, strategies as st

from conftest import tiny_model
from minidlm.model import DiffusionLM, ModelConfig
from minidlm.optim import Muon, build_optimizers, lr_factor, newton_schulz_float32

COEFFS = (3.4445, -4.775, 2.0315)


@given(rows=st.integers(2, 48), cols=st.integers(2, 48), seed=st.integers(0, 1000))
def test_float32_newton_schulz_is_the_library_iteration_without_bf16_rounding(rows, cols, seed):
    """The library's own iteration with its cast to bf16 made a no-op gives ours to float32
    precision (comparing against its bf16 result instead depended on the CPU's bf16 kernels)."""
    g = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    ours = newton_schulz_float32(g, COEFFS, 5, 1e-7)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.Tensor, "bfloat16", lambda self: self.clone())
        theirs = library._zeropower_via_newtonschulz(g, COEFFS, 5, 1e-7)
    assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == g.shape
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5)


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


def test_bf16_autocast_only_where_the_device_multiplies_bf16_natively(monkeypatch):
    """train_tiny.py's --bf16 (default on): autocast on a CPU with AVX512-BF16 or AMX, float32 on
    one without (emulated bf16 is slower there); parameters and loss stay float32 either way."""
    from minidlm.train import TrainConfig, bf16_autocast, train_step
    cpu = torch.device("cpu")
    for avx512_bf16, amx, expected in [(False, False, False), (True, False, True), (False, True, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        autocast = bf16_autocast(cpu)
        assert (autocast is not None) == expected
    assert autocast.fast_dtype == torch.bfloat16
    args = TrainConfig()
    model = DiffusionLM(ModelConfig(vocab_size=300, n_layer=1, n_head=2, d_model=16, max_seq_len=8))
    opts = build_optimizers(model, args.optimizer, args.lr, args.muon_lr, args.weight_decay)
    x0 = torch.randint(0, 299, (4, 8))
    loss = train_step(model, opts, x0, 299, torch.Generator().manual_seed(0), args, autocast=autocast)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())
