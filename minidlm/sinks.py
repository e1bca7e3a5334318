"""Attention-sink probe: where the sinks sit at every denoising step, and whether they move.

"One Token Is Enough" (arXiv 2601.19657) and Rulli et al. (arXiv 2510.15731): in diffusion LMs
the positions that soak up attention MOVE across denoising steps. Per step s, layer l, sample b
and head h the probe takes the column mean of the attention in effect, c_j = (1/N) sum_i A_ij
over the N real (non-padding) query rows, and records:

- the top key: argmax_j c_j over real content keys (the [SINK] token, when present, is reported
  separately as its mass c_0);
- two sink sets: the RELATIVE rule c_j > 3 / N_keys (Rulli et al.'s threshold of 3), and the
  STRICT rule that also asks for a value norm ||v_j|| below that head's mean over the real
  content keys, so a content hub (a well-attended token with a large value) is not mistaken for
  a no-op sink;
- the top key's value norm over that head's mean over real content keys.

Summaries, each over the (step, layer, sample, head) cases where it means something, with the
number of such cases beside it:
- switch rate: the top key changes between consecutive steps, over the pairs where the top key
  is a (relative) sink at BOTH steps (a head without a sink has no sink to switch);
- Jaccard of consecutive relative sink sets, over the pairs whose union is not empty (two empty
  sets say nothing about movement);
- distinct top sinks: per head, distinct positions among the steps where its top key is a sink,
  averaged over the heads that have such a step;
- sinks per head (relative, strict) and the top key's kind ([MASK], punctuation/space, prompt,
  committed response token) and value-norm ratio, over every case; mass on [SINK];
- the literature's yardstick beside ours (Gu et al., "When Attention Sink Emerges"): the share of
  heads whose mean attention to ONE key exceeds 0.3, for the top content key and for [SINK].
  It does not scale with the number of keys as 3/N does (at N = 96 keys, 0.3 is 10x the 3/N bar).
The probe only observes (generate(..., observe=True)); it changes no token (tested).
"""
from collections import Counter

import torch

from .cli import pyplot, save_figure
from .repetition import runs_of

KINDS = ("mask", "punct/space", "prompt", "committed")


class SinkProbe:
    """Use: probe = SinkProbe(model, tok, prompt_lens); generate(..., on_step=probe, observe=True)."""

    def __init__(self, model, tokenizer, prompt_lens, relative: float = 3.0, snapshot_steps=()):
        self.tok, self.relative = tokenizer, relative
        self.snapshot_steps, self.snapshots = set(snapshot_steps), {}  # step -> (n, L, S+L), row 0
        self.sink = int(model.cfg.sink)
        self.prompt_lens = list(prompt_lens)  # real prompt length of each row (without padding)
        self.top, self.top_is_sink, self.sets, self.strict_sets = [], [], [], []
        self.kinds, self.top_mean, self.over_03, self.sink_over_03 = [], [], [], []
        self.sink_mass, self.norm_ratio = [], []
        punct = [tokenizer.is_punctuation_token(i) or tokenizer.is_whitespace_token(i)
                 for i in range(tokenizer.vocab_size)]
        self.punct = torch.tensor(punct)

    def __call__(self, step, x, cache):
        B, L = x.shape
        pad = torch.tensor([max(self.prompt_lens) - p for p in self.prompt_lens], device=x.device)
        real = torch.arange(L, device=x.device)[None] >= pad[:, None]            # (B, L) real rows
        attn = torch.stack(cache.record.attention)                                # (n, B, H, L, S+L)
        if step in self.snapshot_steps:
            self.snapshots[step] = attn[:, 0].mean(1).cpu()
        weights = real[None, :, None, :, None].to(attn.dtype)
        col = (attn * weights).sum(3) / real.sum(1)[None, :, None, None]          # (n, B, H, S+L)
        content = col[..., self.sink:]                                            # (n, B, H, L)
        real_keys = real[None, :, None, :]                                        # (1, B, 1, L)
        norms = torch.stack(cache.record.value_norms)[..., self.sink:]            # (n, B, H, L)
        mean_norm = (norms * real_keys).sum(-1, keepdim=True) / real.sum(1)[None, :, None, None]
        n_keys = real.sum(1)[None, :, None, None] + self.sink
        is_sink = (content > self.relative / n_keys) & real_keys
        top = content.masked_fill(~real_keys, -1).argmax(-1)                      # (n, B, H)
        self.top.append(top.cpu())
        self.top_is_sink.append(is_sink.gather(-1, top[..., None])[..., 0].cpu())
        self.sets.append(is_sink.cpu())
        self.strict_sets.append((is_sink & (norms < mean_norm)).cpu())
        self.over_03.append((content.masked_fill(~real_keys, 0).amax(-1) > 0.3).cpu())  # (n, B, H)
        if self.sink:
            self.sink_mass.append(col[..., 0].cpu())                              # (n, B, H)
            self.sink_over_03.append((col[..., 0] > 0.3).cpu())
        top_norm = norms.gather(-1, top[..., None])[..., 0]
        self.norm_ratio.append((top_norm / mean_norm[..., 0]).cpu())              # (n, B, H)
        self.kinds.append(self._kinds(x, top, max(self.prompt_lens)))
        head_mean = content.mean(2).masked_fill(~real[None], -1)                  # (n, B, L)
        self.top_mean.append(head_mean.argmax(-1).cpu())

    def _kinds(self, x, top, prompt_end):
        """Kind of token at each top sink: (n, B, H) ints indexing KINDS."""
        n, B, H = top.shape
        flat = top.permute(1, 0, 2).reshape(B, n * H)
        token = x.gather(1, flat)
        kind = torch.full_like(token, 3)
        kind[flat < prompt_end] = 2
        kind[self.punct.to(x.device)[token.clamp(max=len(self.punct) - 1)]] = 1
        kind[token == self.tok.mask_id] = 0
        return kind.reshape(B, n, H).permute(1, 0, 2).cpu()

    def summary(self) -> dict:
        top = torch.stack(self.top)                 # (S, n, B, H)
        top_is_sink = torch.stack(self.top_is_sink)
        sets = torch.stack(self.sets)               # (S, n, B, H, L)
        strict = torch.stack(self.strict_sets)
        both = top_is_sink[1:] & top_is_sink[:-1]   # consecutive steps with a sink at the top
        switch = (top[1:] != top[:-1]) & both
        union = (sets[1:] | sets[:-1]).sum(-1)
        inter = (sets[1:] & sets[:-1]).sum(-1)
        jaccard = inter[union > 0].double() / union[union > 0]
        distinct = [len(set(top[top_is_sink[:, l, b, h], l, b, h].tolist()))
                    for l in range(top.shape[1]) for b in range(top.shape[2]) for h in range(top.shape[3])]
        distinct = [d for d in distinct if d]
        kinds = Counter(torch.stack(self.kinds).flatten().tolist())
        total = sum(kinds.values())
        ratio = lambda num, den: num / den if den else float("nan")
        out = {
            "steps": top.shape[0],
            "switch_rate": ratio(switch.sum().item(), both.sum().item()),
            "switch_pairs": both.sum().item(),
            "switch_rate_by_layer": [ratio(switch[:, l].sum().item(), both[:, l].sum().item())
                                     for l in range(top.shape[1])],
            "jaccard": jaccard.mean().item() if len(jaccard) else float("nan"),
            "jaccard_pairs": len(jaccard),
            "distinct_top_sinks": ratio(sum(distinct), len(distinct)),
            "heads_with_a_sink": ratio(len(distinct), top[0].numel()),
            "relative_sinks_per_head": sets.sum(-1).float().mean().item(),
            "strict_sinks_per_head": strict.sum(-1).float().mean().item(),
            "top_sink_kind": {k: kinds.get(i, 0) / total for i, k in enumerate(KINDS)},
            "top_sink_value_norm_ratio": torch.stack(self.norm_ratio).mean().item(),
            "heads_over_0.3": torch.stack(self.over_03).float().mean().item(),
        }
        if self.sink_mass:
            mass = torch.stack(self.sink_mass)
            out["sink_mass"] = mass.mean().item()
            out["sink_mass_by_layer"] = mass.mean((0, 2, 3)).tolist()
            out["sink_heads_over_0.3"] = torch.stack(self.sink_over_03).float().mean().item()
        return out

    def trajectory(self, row: int = 0) -> list:
        """Per layer, the top sink of the head-averaged column mean of `row`, at each step."""
        return torch.stack(self.top_mean)[:, :, row].T.tolist()  # (n_layer, steps)


@torch.no_grad()
def training_curve_point(model, windows, mask_id, mask_ratio: float = 0.5, seed: int = 0) -> dict:
    """Sink statistics of one forward over validation windows, half masked, for the emergence
    curve that train_tiny.py logs. Per layer and head, c_j is the column mean over the content
    query rows (the [SINK] row excluded). Returns means over layers, heads and windows of:
    top_mass (max_j c_j over content keys), sink_mass (c_0 on [SINK]; None without one),
    top_value_ratio (value norm of the top content key / mean content value norm) and
    sink_value_ratio (the same for [SINK]). Uses its own generator: training RNG is untouched."""
    was_training = model.training
    model.eval()
    g = torch.Generator(device=windows.device).manual_seed(seed)
    masked = torch.rand(windows.shape, generator=g, device=windows.device) < mask_ratio
    _, trace = model(torch.where(masked, mask_id, windows), trace=True)
    model.train(was_training)
    s = int(model.cfg.sink)
    top_mass, sink_mass, top_ratio, sink_ratio = [], [], [], []
    for attn, values in zip(trace.attn, trace.values):
        col = attn[:, :, s:].mean(2)                              # (B, H, S + T)
        norms = values.norm(dim=-1).mean(1)                       # (B, S + T), mean over heads
        content, content_norms = col[..., s:], norms[:, s:]
        mean_norm = content_norms.mean(-1, keepdim=True)
        mass, top = content.max(-1)                               # (B, H)
        top_mass.append(mass.mean())
        top_ratio.append((content_norms.gather(1, top) / mean_norm).mean())
        if s:
            sink_mass.append(col[..., 0].mean())
            sink_ratio.append((norms[:, :1] / mean_norm).mean())
    mean = lambda xs: torch.stack(xs).mean().item() if xs else None
    return {"top_mass": mean(top_mass), "sink_mass": mean(sink_mass),
            "top_value_ratio": mean(top_ratio), "sink_value_ratio": mean(sink_ratio)}


def run_lengths(positions) -> str:
    """'12x40 > 37x30': position 12 for 40 steps, then 37 for 30 steps."""
    return " > ".join(f"{p}x{n}" for p, n in runs_of(positions))


def plot(probe: SinkProbe, folder: str, prompt_len: int) -> list:
    """Write the sink trajectory and the attention maps at the snapshot steps; returns the paths."""
    import os
    plt = pyplot()
    os.makedirs(folder, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for layer, positions in enumerate(probe.trajectory(0)):
        ax.plot(range(1, len(positions) + 1), positions, drawstyle="steps-post", label=f"layer {layer + 1}")
    ax.axhline(prompt_len - 0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("top-sink position")
    ax.set_title("Where the sink sits (head-averaged column mean, sample 1)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths = [os.path.join(folder, "sink_trajectory.png")]
    save_figure(fig, paths[0], dpi=120)
    plt.close(fig)
    if probe.snapshots:
        steps = sorted(probe.snapshots)
        n = probe.snapshots[steps[0]].shape[0]
        layers = sorted({0, n // 2, n - 1})
        fig, axes = plt.subplots(len(steps), len(layers), figsize=(3 * len(layers), 3 * len(steps)),
                                 squeeze=False)
        for r, step in enumerate(steps):
            for c, layer in enumerate(layers):
                axes[r][c].imshow(probe.snapshots[step][layer], cmap="magma", aspect="auto")
                axes[r][c].set_title(f"step {step}, layer {layer + 1}", fontsize=8)
                axes[r][c].set_xlabel("key" + (" (0 = [SINK])" if probe.sink else ""), fontsize=7)
                axes[r][c].set_ylabel("query", fontsize=7)
        fig.tight_layout()
        paths.append(os.path.join(folder, "attention_maps.png"))
        save_figure(fig, paths[-1], dpi=110)
        plt.close(fig)
    return paths


def describe(probe: SinkProbe, prompt_len: int) -> str:
    """The compact terminal view: top-sink trajectory per layer (row 0), then the summary."""
    lines = [f"top sink per layer (head-averaged column mean, sample 1; position x steps; "
             f"the response starts at {prompt_len}):"]
    for layer, positions in enumerate(probe.trajectory(0)):
        lines.append(f"  layer {layer + 1:2d}: {run_lengths(positions)}")
    s = probe.summary()
    kinds = ", ".join(f"{k} {v:.0%}" for k, v in s["top_sink_kind"].items())
    lines.append(f"switch rate {s['switch_rate']:.1%} per step (of {s['switch_pairs']} step pairs with a sink "
                 f"on top at both) | Jaccard of consecutive sink sets {s['jaccard']:.2f} (of {s['jaccard_pairs']} "
                 f"pairs not both empty)")
    lines.append(f"distinct top sinks {s['distinct_top_sinks']:.1f} per head, over the "
                 f"{s['heads_with_a_sink']:.0%} of heads whose top key is ever a sink")
    lines.append(f"sinks per head: {s['relative_sinks_per_head']:.1f} (c_j > 3/N), "
                 f"{s['strict_sinks_per_head']:.1f} (and value norm below the mean) | top sink is: {kinds}")
    lines.append(f"top key's value norm / its head's mean over real keys: {s['top_sink_value_norm_ratio']:.2f}")
    if "sink_mass" in s:
        by_layer = " ".join(f"{m:.0%}" for m in s["sink_mass_by_layer"])
        lines.append(f"attention mass on [SINK]: {s['sink_mass']:.1%} (by layer: {by_layer})")
    return "\n".join(lines)
