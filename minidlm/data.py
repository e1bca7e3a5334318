"""From documents to batches: the corpus, its token stream, training windows, padded prompts.

Documents are encoded and joined with end-of-text, as in LLaDA's pre-training: the model sees
fixed-length windows cut anywhere in the stream, so it learns where stories start and end.
The sampler batches prompts (canvases) of different lengths by LEFT-padding them, with an
additive attention bias that hides the pad keys (`pad_prompts`, `padding_bias`).
"""
import torch

from .corpus import NAME_SHARE, default_corpus, load_text_file, split_train_val


def load_documents(data_path=None, seed: int = 0, name_share: float = NAME_SHARE):
    """(train_docs, val_docs): the embedded corpus (name_share: corpus.NAME_SHARE), or a user's
    UTF-8 text file split 95/5."""
    if data_path is None:
        return default_corpus(seed=seed, name_share=name_share)
    return split_train_val(load_text_file(data_path), seed=seed)


def token_stream(tokenizer, docs) -> torch.Tensor:
    """One long 1-D tensor: doc_1 EOT doc_2 EOT ..."""
    ids = []
    for doc in docs:
        ids.extend(tokenizer.encode(doc))
        ids.append(tokenizer.eot_id)
    return torch.tensor(ids, dtype=torch.long)


def random_windows(stream, batch_size: int, seq_len: int, generator) -> torch.Tensor:
    """(batch_size, seq_len) windows starting at random offsets of the stream."""
    starts = torch.randint(0, len(stream) - seq_len + 1, (batch_size,), generator=generator)
    return stream[starts[:, None] + torch.arange(seq_len)]


def fixed_windows(stream, seq_len: int, max_windows: int) -> torch.Tensor:
    """Non-overlapping windows from the start of the stream, for a repeatable evaluation."""
    n = min(max_windows, len(stream) // seq_len)
    return stream[: n * seq_len].view(n, seq_len)


def pad_prompts(prompts, pad_id: int, device):
    """Left-pad lists of ids into (B, P); returns the ids and the pad counts (B,)."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, P - len(p):] = torch.tensor(p, dtype=torch.long)
    n_pad = torch.tensor([P - len(p) for p in prompts], dtype=torch.long)
    return ids.to(device), n_pad.to(device)


def padding_bias(n_pad, total_len: int, dtype=torch.float32):
    """Additive attention bias (B, 1, 1, L): -inf on pad keys, or None when nothing is padded."""
    cols = torch.arange(total_len, device=n_pad.device)
    bias = torch.zeros(len(n_pad), 1, 1, total_len, dtype=dtype, device=n_pad.device)
    return bias.masked_fill((cols < n_pad[:, None])[:, None, None, :], float("-inf"))
