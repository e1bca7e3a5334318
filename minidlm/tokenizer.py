"""A small byte-level BPE tokenizer, trained here and run by tiktoken.

Byte-level BPE in five lines: text is first cut into pieces by a regex (words with their
leading space, numbers, punctuation runs, whitespace). Each piece is a sequence of UTF-8 bytes,
so the 256 single bytes are tokens and any string can be encoded. Training repeatedly finds the
most frequent adjacent pair of tokens inside pieces and merges it into a new token, recording
the merge order as its rank. Encoding replays the merges on each piece, lowest rank first.

Why our own: the project runs without internet, so tiktoken's named encodings (gpt2,
cl100k_base) cannot be downloaded and are never used. `train_bpe` below learns the ranks from
our corpus in seconds, and tiktoken's fast Rust `Encoding` applies them.

Special tokens come after the learned ranks, in this order:
  EOT  "<|endoftext|>"  separates documents in the packed training stream.
  MASK "<|mask|>"       the absorbing state of the diffusion forward process: noising replaces
                        tokens by [MASK], and the model learns to predict what was there.
  SINK "<|sink|>"       reserved and unused: no code reads `sink_id`. The model's [SINK] (arXiv
                        2601.19657) is not a vocabulary token but a learned embedding
                        (`DiffusionLM.sink_embed`, model.py) that the model itself prepends. The
                        id stays so that the ids of saved checkpoints' tokenizers do not change.
`encode` never produces them, even for text containing these literal strings.

    tok = Tokenizer.train(texts, vocab_size=1024)
    ids = tok.encode("Hello world")       # tok.decode(ids) == "Hello world"
"""

import heapq
import string
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable

import regex
import tiktoken

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
MASK = "<|mask|>"
SINK = "<|sink|>"
SPECIAL_TOKENS = (EOT, MASK, SINK)
MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1  # every byte, the specials and at least one merge
SPECIAL_DISPLAY = {EOT: "[EOT]", MASK: "[MASK]", SINK: "[SINK]"}  # SINK: reserved, never produced
STATE_FORMAT, STATE_VERSION = "minidlm-bpe", 1
# Made visible by token_str; other non-printable characters are shown as Python escapes.
VISIBLE_WHITESPACE = {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def train_bpe(texts: Iterable[str], vocab_size: int, pat_str: str = GPT2_PATTERN) -> dict[bytes, int]:
    """Learn byte-level BPE ranks: {token bytes: rank}, 0-255 the single bytes, then merges.

    Pair counts are kept incrementally: `pieces_with[pair]` indexes the pieces containing a pair,
    so a merge only revisits those pieces. A lazy max-heap picks the next pair: highest count,
    ties broken by the smallest (left bytes, right bytes). Stops early once no pair occurs twice.
    """
    split = regex.compile(pat_str)
    piece_freq = Counter()
    for text in texts:
        piece_freq.update(split.findall(text))
    # Tokens are ints during training; token_bytes[t] is what token t spells.
    token_bytes = [bytes([b]) for b in range(256)]
    token_id = {tb: t for t, tb in enumerate(token_bytes)}
    pieces = [list(p.encode("utf-8")) for p in piece_freq]
    freqs = list(piece_freq.values())

    pair_count = Counter()
    pieces_with = defaultdict(set)
    for i, symbols in enumerate(pieces):
        for pair in zip(symbols, symbols[1:]):
            pair_count[pair] += freqs[i]
            pieces_with[pair].add(i)

    def heap_entry(pair):
        return (-pair_count[pair], token_bytes[pair[0]], token_bytes[pair[1]], pair)

    heap = [heap_entry(pair) for pair in pair_count]
    heapq.heapify(heap)
    while len(token_bytes) < vocab_size and heap:
        neg_count, _, _, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg_count:
            continue  # stale entry: this pair's count changed after it was pushed
        if -neg_count < 2:
            break
        merged = token_bytes[pair[0]] + token_bytes[pair[1]]
        # Two splits can spell the same bytes (a+bc, ab+c): reuse the token, one rank per string.
        new = token_id.get(merged)
        if new is None:
            new = token_id[merged] = len(token_bytes)
            token_bytes.append(merged)
        changed = set()
        for i in sorted(pieces_with.pop(pair)):
            old = pieces[i]
            symbols, j = [], 0
            while j < len(old):
                if j + 1 < len(old) and (old[j], old[j + 1]) == pair:
                    symbols.append(new)
                    j += 2
                else:
                    symbols.append(old[j])
                    j += 1
            old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(symbols, symbols[1:]))
            pieces[i] = symbols
            for p in old_pairs:
                pair_count[p] -= freqs[i]
            for p in new_pairs:
                pair_count[p] += freqs[i]
                pieces_with[p].add(i)
            for p in set(old_pairs) - set(new_pairs) - {pair}:
                pieces_with[p].discard(i)
            changed.update(old_pairs, new_pairs)
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, heap_entry(p))
            else:
                del pair_count[p]
                pieces_with.pop(p, None)
    return {tb: rank for rank, tb in enumerate(token_bytes)}


def _is_punctuation_text(text: str) -> bool:
    # Punctuation is Unicode category P*, plus the ASCII symbols string.punctuation counts ($+<=).
    punct = [unicodedata.category(c).startswith("P") or c in string.punctuation for c in text]
    return any(punct) and all(p or c.isspace() for p, c in zip(punct, text))


class Tokenizer:
    """Learned BPE ranks + the three special tokens (the third reserved), wrapped in a `tiktoken.Encoding`."""

    def __init__(self, mergeable_ranks: dict[bytes, int], pat_str: str = GPT2_PATTERN):
        _check_ranks(mergeable_ranks)
        n_ranks = len(mergeable_ranks)
        self.pat_str = pat_str
        self.mergeable_ranks = mergeable_ranks
        self.special_ids = {s: n_ranks + k for k, s in enumerate(SPECIAL_TOKENS)}
        self._special_by_id = {i: s for s, i in self.special_ids.items()}
        # sink_id is reserved and unused (the model's [SINK] is its own embedding, not a token)
        self.eot_id, self.mask_id, self.sink_id = (self.special_ids[s] for s in SPECIAL_TOKENS)
        self.encoding = tiktoken.Encoding(
            name=f"minidlm-bpe-{n_ranks}",
            pat_str=pat_str,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self.special_ids,
        )
        self.vocab_size = self.encoding.n_vocab
        # Per-token lookups, computed once: the vocabulary is small and metrics call these a lot.
        texts = [self._token_text(i) for i in range(self.vocab_size)]
        self._whitespace = [t is not None and t.isspace() for t in texts]
        self._punctuation = [t is not None and _is_punctuation_text(t) for t in texts]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024, pat_str: str = GPT2_PATTERN) -> "Tokenizer":
        """Train on `texts`; vocab_size counts the 3 specials, so merges = vocab_size - 259."""
        if vocab_size < MIN_VOCAB:
            raise ValueError(f"vocab_size must be >= {MIN_VOCAB} (256 bytes + 3 specials + 1 merge), got {vocab_size}")
        return cls(train_bpe(texts, vocab_size - len(SPECIAL_TOKENS), pat_str), pat_str)

    def encode(self, text: str) -> list[int]:
        """Ordinary text to ids. Never emits special ids: "<|mask|>" in text is just text.

        decode(encode(s)) == s for every str without lone surrogates (tiktoken turns those
        into U+FFFD, as any UTF-8 encoder must).
        """
        return self.encoding.encode_ordinary(text)

    def prompt(self, text: str) -> list[int]:
        """A prompt's ids: end-of-text first ("a new story starts here", as in training), then
        the text."""
        return [self.eot_id] + self.encode(text)

    def until_eot(self, ids) -> list[int]:
        """A generated row (ids or a 1-D tensor) cut at its first end-of-text (exclusive)."""
        return cut_at(ids, self.eot_id)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to text. Special ids decode to their literal strings ("<|mask|>"); use token_str
        to tell them apart from user text. Bytes that are not valid UTF-8 (a sequence cut inside
        a character) become U+FFFD instead of raising."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        return self.encoding.decode(ids, errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token_id)

    def token_str(self, token_id: int) -> str:
        """One token as printable text for terminal displays: "[MASK]", "␣the", "\\n", "\\xe2"."""
        if token_id in self._special_by_id:
            return SPECIAL_DISPLAY[self._special_by_id[token_id]]
        text = self.token_bytes(token_id).decode("utf-8", errors="backslashreplace")
        return "".join(
            VISIBLE_WHITESPACE.get(c, c if c.isprintable() else repr(c)[1:-1]) for c in text
        )

    def is_whitespace_token(self, token_id: int) -> bool:
        """True for a token whose bytes are whole UTF-8 characters, all whitespace."""
        return self._whitespace[token_id]

    def is_punctuation_token(self, token_id: int) -> bool:
        """True for a token of punctuation and whitespace only, with at least one punctuation."""
        return self._punctuation[token_id]

    def _token_text(self, token_id: int) -> str | None:
        # The token's text, or None for specials and for bytes that are part of a character.
        if token_id in self._special_by_id:
            return None
        try:
            return self.token_bytes(token_id).decode("utf-8")
        except UnicodeDecodeError:
            return None

    def state_dict(self) -> dict:
        """Plain str/int/list state that survives torch.save + torch.load(weights_only=True)."""
        merges = sorted((rank, tb) for tb, rank in self.mergeable_ranks.items() if rank >= 256)
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "pat_str": self.pat_str,
            "merged_tokens_hex": [tb.hex() for _, tb in merges],  # rank 256, 257, ... in order
            "special_tokens": list(SPECIAL_TOKENS),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "Tokenizer":
        if not isinstance(state, dict):
            raise ValueError(f"tokenizer state must be a dict, got {type(state).__name__}")
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"not a {STATE_FORMAT} v{STATE_VERSION} tokenizer state: "
                f"format={state.get('format')!r} version={state.get('version')!r}"
            )
        if state.get("special_tokens") != list(SPECIAL_TOKENS):
            raise ValueError(f"special tokens {state.get('special_tokens')!r} != {list(SPECIAL_TOKENS)}")
        pat_str, merged_hex = state.get("pat_str"), state.get("merged_tokens_hex")
        if not isinstance(pat_str, str) or not isinstance(merged_hex, list):
            raise ValueError("tokenizer state needs 'pat_str' (str) and 'merged_tokens_hex' (list)")
        ranks = {bytes([b]): b for b in range(256)}
        for rank, hex_str in enumerate(merged_hex, start=256):
            try:
                ranks[bytes.fromhex(hex_str)] = rank
            except (TypeError, ValueError):
                raise ValueError(f"merged token {rank} is not a hex string: {hex_str!r}") from None
        if len(ranks) != 256 + len(merged_hex):
            raise ValueError("tokenizer state has duplicate merged tokens")
        return cls(ranks, pat_str)


def cut_at(ids, stop: int) -> list[int]:
    """ids (a list or 1-D tensor) up to the first `stop` (exclusive); all of them if none."""
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    return ids[:ids.index(stop)] if stop in ids else ids


def _check_ranks(ranks: dict[bytes, int]) -> None:
    """Ranks must be 0..n-1, bytes([b]) -> b, and every merged token the concatenation of two
    tokens of lower rank (otherwise BPE could never build it)."""
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("mergeable ranks must be exactly 0..n-1")
    if any(ranks.get(bytes([b])) != b for b in range(256)):
        raise ValueError("ranks 0-255 must be the single bytes, bytes([b]) -> b")
    for tb, rank in ranks.items():
        if rank >= 256 and not any(
            ranks.get(tb[:k], rank) < rank and ranks.get(tb[k:], rank) < rank for k in range(1, len(tb))
        ):
            raise ValueError(f"merged token {tb!r} (rank {rank}) is not two lower-rank tokens joined")
