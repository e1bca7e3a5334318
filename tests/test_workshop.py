"""The workshop notebook (docs/workshop.ipynb) and the helpers it calls (minidlm/workshop.py)."""
import math
import os

import pytest
import torch

from conftest import MASK_ID, tiny_model
from minidlm.sampler import SamplerConfig, generate
from minidlm.tokenizer import Tokenizer
from minidlm.workshop import (decode_each, fill, markdown_table, masked_view, moving_average,
                              nelbo_by_t, plot_nelbo_by_t, plot_training, sink_probe)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = Tokenizer.train(["Tom had a red ball. Mia had a blue kite. The cat sat on the mat."] * 20, vocab_size=300)


def story_model(sink=False):
    """A random float64 model over TOK's vocabulary (conftest's tiny model, resized)."""
    from minidlm.model import DiffusionLM, ModelConfig
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=TOK.vocab_size, n_layer=2, n_head=2, d_model=16, max_seq_len=96,
                      sink=sink, zero_init=False)
    return DiffusionLM(cfg).double().eval()


def test_masked_view_draws_one_glyph_per_mask_and_keeps_the_rest():
    ids = TOK.encode("Tom had a red ball.")
    masked = [TOK.mask_id if i % 2 else t for i, t in enumerate(ids)] + [TOK.eot_id]
    view = masked_view(TOK, torch.tensor(masked), glyph="#")
    assert view.count("#") == len(ids) // 2
    assert view.endswith("\u00b6")
    assert masked_view(TOK, ids) == "Tom had a red ball."


def test_nelbo_by_t_is_the_nelbo_loss_at_that_t_in_bits():
    from minidlm.diffusion import nelbo_loss
    model = tiny_model()
    windows = torch.randint(0, 30, (4, 16), generator=torch.Generator().manual_seed(0))
    bits = nelbo_by_t(model, windows, MASK_ID, [0.3, 0.7], seed=5)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        expected = [nelbo_loss(model, windows, MASK_ID, g, t_min=t, t_max=t).item() / math.log(2) for t in (0.3, 0.7)]
    assert bits == pytest.approx(expected)
    assert all(b > 0 for b in bits)


def test_moving_average_averages_the_last_n_values():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([2.0, 4.0], 10) == [2.0, 3.0]
    assert moving_average([], 3) == []


def test_plots_label_their_axes_and_draw_the_word_frequency_line_once():
    plt = pytest.importorskip("matplotlib.pyplot")
    meta = {"losses": [math.log(2) * b for b in (8.0, 6.0, 5.0, 4.0)], "unigram_bits_per_token": 7.7,
            "evals": [{"step": 2, "bits": 5.5}, {"step": 4, "bits": 4.5}]}
    fig, ax = plt.subplots()
    plot_training(ax, meta, "run", smooth=2)
    plot_training(ax, meta, "again", smooth=2)
    labels = [line.get_label() for line in ax.get_lines()]
    assert sum(label.startswith("word frequencies") for label in labels) == 1
    steps, bits = ax.get_lines()[0].get_data()
    assert list(steps) == [1, 2, 3, 4] and list(bits) == pytest.approx([8.0, 6.0, 5.0, 4.0])
    assert ax.get_xlabel() and ax.get_ylabel() == "bits per token"
    fig2, ax2 = plt.subplots()
    plot_nelbo_by_t(ax2, [0.25, 0.75], [1.0, 3.0], nelbo=2.0, unigram=7.7)
    assert ax2.get_xlabel().startswith("t") and len(ax2.get_lines()) == 3
    plt.close(fig)
    plt.close(fig2)


def test_decode_each_gives_generates_tokens_and_counts_rows_and_repeats():
    model = story_model()
    prompts = ["Tom had a red ball.", "Mia had"]
    cfg = SamplerConfig(gen_length=8, steps=8, block_length=8)
    rows = decode_each(model, TOK, prompts, {"none": cfg, "again": cfg,
                                             "dual": SamplerConfig(gen_length=8, steps=8, block_length=4, cache="dual")})
    ids = [TOK.prompt(p) for p in prompts]
    assert torch.equal(rows[0]["out"], generate(model, ids, TOK.mask_id, TOK.eot_id, cfg))
    assert rows[1]["same"] == 1.0 and rows[0]["rows"] > rows[2]["rows"] > 0
    for row in rows:
        assert row["tokens_per_s"] > 0 and row["repetition"].n == 2 and row["repeats"] >= 0
        assert row["text"].replace("[[", "").replace("]]", "") == TOK.decode(TOK.until_eot(row["out"][0])).replace("\n", " ")


def test_markdown_table_has_a_header_a_rule_and_one_line_per_row():
    table = markdown_table([{"a": 1, "b": 2.5}, {"a": 3, "b": 4.0}], {"A": lambda r: r["a"], "B": lambda r: f"{r['b']:.1f}"})
    assert table.splitlines() == ["| A | B |", "|---|---|", "| 1 | 2.5 |", "| 3 | 4.0 |"]


def test_fill_keeps_the_given_text_and_fills_each_hole_with_its_token_count():
    model = story_model()
    whole, pieces = fill(model, TOK, "Tom had <|hole:2|> ball. Mia had a <|hole:1|>.")
    assert len(pieces) == 2 and whole.startswith("Tom had") and whole.endswith(".")
    assert whole.count(" ball. Mia had a") == 1
    assert all(piece for piece in pieces)
    with pytest.raises(ValueError):
        fill(model, TOK, "no hole here")


@pytest.mark.parametrize("sink", [False, True])
def test_sink_probe_summarises_every_step(sink):
    summary = sink_probe(story_model(sink), TOK, "Tom had a red ball.", gen_length=8)
    assert summary["steps"] == 8
    assert ("sink_mass" in summary) == sink


NOTEBOOK, SCRIPT = os.path.join(ROOT, "docs", "workshop.ipynb"), os.path.join(ROOT, "docs", "workshop.py")


def test_the_notebook_is_committed_without_outputs():
    import json
    with open(NOTEBOOK, encoding="utf-8") as f:
        cells = json.load(f)["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_the_notebook_is_its_script_converted():
    """docs/workshop.ipynb is `jupytext --update --to ipynb docs/workshop.py`: the same cells, same sources."""
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    script, notebook = jupytext.read(SCRIPT), nbformat.read(NOTEBOOK, as_version=4)
    assert [(c.cell_type, c.source) for c in script.cells] == [(c.cell_type, c.source) for c in notebook.cells], \
        "docs/workshop.ipynb is out of date: run jupytext --update --to ipynb docs/workshop.py"


@pytest.mark.slow
def test_the_workshop_notebook_runs_end_to_end(tmp_path, monkeypatch):
    """docs/workshop.ipynb top to bottom with a small budget (18 s of training, fewer prompts),
    from the repository root: any cell error fails the test."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    for name, value in {"WORKSHOP_TRAIN_MINUTES": "0.3", "WORKSHOP_FAST": "1",
                        "WORKSHOP_RUN_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": ROOT}})
    client.execute()  # raises CellExecutionError on the first failing cell
    assert os.path.isfile(tmp_path / "workshop.pt") and os.path.isfile(tmp_path / "tiny.gif")
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "display_data"]
    assert sum("image/png" in o.get("data", {}) for o in shown) >= 2  # the figures were drawn inline
