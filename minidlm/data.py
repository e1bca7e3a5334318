"""From documents to training windows: the corpus, its token stream, and batches of windows.

Documents are encoded and joined with end-of-text, as in LLaDA's pre-training: the model sees
fixed-length windows cut anywhere in the stream, so it learns where stories start and end.
"""
import torch

from .corpus import default_corpus, load_text_file, split_train_val


def load_documents(data_path=None, seed: int = 0):
    """(train_docs, val_docs): the embedded corpus, or a user's UTF-8 text file split 95/5."""
    if data_path is None:
        return default_corpus(seed=seed)
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
