"""Shared fixtures: tiny random models in float64 (so greedy ties cannot flip on 1e-7 noise)."""
import torch
from hypothesis import settings

from minidlm.model import DiffusionLM, ModelConfig

settings.register_profile("ci", max_examples=25, deadline=None)
settings.load_profile("ci")
# One thread: these models are tiny, so a second thread buys nothing and, on a busy 2-core machine,
# its wake-ups made every small op wait for a core (ten times slower; the shipped model's golden
# cases took 24 s with two threads and 3 s with one).
torch.set_num_threads(1)


VOCAB, MASK_ID, PAD_ID = 40, 38, 37


# The architecture of train_tiny.py's default recipe (zero_init is an init choice only, and would
# leave these random test models with nothing in their residual branches).
RECIPE = dict(qk_norm=True, mlp_act="relu2", head_bias=True)
FIRST_ROUND = dict(qk_norm=False, mlp_act="gelu", head_bias=False)


def tiny_model(sink=False, seed=0, n_layer=2, max_seq_len=64, sink_rotation=True, arch=RECIPE,
               sink_value="learned", random_gains=False):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, n_layer=n_layer, n_head=2, d_model=16,
                      max_seq_len=max_seq_len, sink=sink, sink_rotation=sink_rotation,
                      sink_value=sink_value, zero_init=False, **arch)
    model = DiffusionLM(cfg).double().eval()
    with torch.no_grad():  # larger weights than the init so predictions are not all alike
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(10)
            elif p.dim() == 1 and p.shape[0] == VOCAB:  # the output bias: not all alike either
                p.normal_()
            elif random_gains:  # norm gains (q, k, blocks, final): unit gains hide a swapped gain
                p.uniform_(0.5, 1.5)
    return model


class StubTokenizer:
    """What the probe needs of a tokenizer: ids 0-4 are punctuation, 5 is whitespace."""
    vocab_size, mask_id = VOCAB, MASK_ID

    def is_punctuation_token(self, i):
        return i < 5

    def is_whitespace_token(self, i):
        return i == 5
