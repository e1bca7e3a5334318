"""The third batch of hostile input: what a study cannot measure, sizes that cannot be allocated or
written, holes too large for an integer, training states that do not fit, and several processes.
Each ends in one line (exit 2 for bad input, 1 for a full disk), before the long work."""
import errno
import json
import os
import subprocess
import sys

import pytest
import torch

from minidlm import checkpoint, cli, files
from minidlm.checkpoint import read, save_model, state_path
from minidlm.corpus import generate_stories, split_sentences
from minidlm.distributed import Ranks
from minidlm.model import DiffusionLM, ModelConfig
from minidlm.tokenizer import Tokenizer
import test_cli
from test_cli import ROOT, assert_clean_error, checkpoint as checkpoint_fixture, script_run  # noqa: F401
from test_resume import TINY as TINY_RUN, run_for

sys.path.insert(0, ROOT)
import train_tiny  # noqa: E402

STORIES = generate_stories(120, seed=5)
SMALL_CORPUS = (STORIES[:100], STORIES[100:])  # (train, held-out) in place of the 41 000 stories


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Checkpoints of the embedded corpus: a 256-token context, the same again (a second seed), one
    with a 24-token context, one with another width, and one trained on a user's text."""
    folder = tmp_path_factory.mktemp("models")
    tok = Tokenizer.train(STORIES, vocab_size=300)
    prose = folder / "prose.txt"
    prose.write_text("\n\n".join(STORIES))

    def make(name, seed=0, data=None, **cfg):
        torch.manual_seed(seed)
        shape = dict(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, max_seq_len=256)
        model = DiffusionLM(ModelConfig(**{**shape, **cfg}))
        path = folder / f"{name}.pt"
        save_model(str(path), model, tok, {"command": "test", "args": {"data": data, "seed": seed}})
        return str(path)
    return dict(base=make("base"), seed1=make("seed1", seed=1), short=make("short", max_seq_len=24),
                wide=make("wide", d_model=32), prose=make("prose-model", data=str(prose)), text=str(prose))


@pytest.fixture
def inproc(capsys, monkeypatch):
    """test_cli's in-process run of a script, alone: these cases replace parts of the script (the
    corpus, the long measurement, torch.save), which a subprocess would not see."""
    return test_cli.in_process_runner(capsys, monkeypatch)


@pytest.fixture
def small_corpus(monkeypatch):
    import studies.infill_study
    import studies.repeat_study
    import studies.sink_compare
    from minidlm import evaluate
    for module in (studies.infill_study, studies.repeat_study, studies.sink_compare):
        monkeypatch.setattr(module, "load_documents", lambda data=None, seed=0: SMALL_CORPUS if data is None
                            else __import__("minidlm.data").data.load_documents(data, seed=seed))
    monkeypatch.setattr("minidlm.data.load_documents", lambda data=None, seed=0: SMALL_CORPUS)
    return evaluate


# ---- studies fed a model they cannot measure ----------------------------------------------------

CASES = [
    # (script, flags (model names are replaced by their paths), what the line says)
    ("studies/sink_compare.py", ["--arm", "a=short", "--json", "-"], "has a context of 24 tokens"),
    ("studies/sink_compare.py", ["--arm", "a=base", "--arm", "a=seed1"], "two arms are named 'a'"),
    ("studies/sink_compare.py", ["--arm", "a=base,wide"], "must share one architecture"),
    ("studies/sink_compare.py", ["--arm", "a=base,base"], "is given twice"),
    ("studies/sink_compare.py", ["--arm", "a=prose"], "was trained on"),
    ("studies/sink_compare.py", ["--arm", "a=base", "--data", "text"], "trained on the embedded corpus"),
    ("studies/sink_compare.py", ["--arm", "a="], "--arm takes NAME=PATH"),
    ("studies/repeat_study.py", ["--checkpoint", "base", "prose", "--quick"], "was trained on"),
    ("studies/repeat_study.py", ["--checkpoint", "base", "base", "--quick"], "is given twice"),
    ("studies/repeat_study.py", ["--checkpoint", "base", "wide", "--quick"], "must share one architecture"),
    ("studies/infill_study.py", ["--checkpoint", "short"], "none of the"),
    ("studies/infill_study.py", ["--checkpoint", "base", "wide"], "must share one architecture"),
    ("studies/infill_study.py", ["--checkpoint", "prose"], "this study needs the embedded corpus"),
    ("minidlm/evaluate.py", ["short"], "has a context of 24 tokens"),
    ("bench.py", ["--checkpoint", "short", "--quick"], "has a context of 24 tokens"),
    ("bench.py", ["--checkpoint", "base", "--quick", "--prompt-length", "200"], "has a context of 256 tokens"),
    ("minidlm/evaluate.py", ["base", "prose"], "was trained on"),
]


@pytest.mark.parametrize("script, flags, needle", CASES)
def test_a_study_refuses_a_model_it_cannot_measure_in_one_line(script, flags, needle, models, small_corpus,
                                                               inproc, monkeypatch, tmp_path):
    measured = []
    import minidlm.evaluate
    import studies.infill_study
    import studies.sink_compare
    spy = lambda *a, **k: measured.append(1) or (0.0, 0, [])
    monkeypatch.setattr(minidlm.evaluate, "sample_grammatical_rate", spy)  # the long part: never reached
    monkeypatch.setattr(studies.sink_compare, "measure", lambda *a, **k: measured.append(1))
    monkeypatch.setattr(studies.infill_study, "measure", lambda *a, **k: measured.append(1))
    argv = [models.get(f, f) for f in flags]
    argv = [a.replace("=" + n, "=" + ",".join(models[p] for p in n.split(","))) if a.startswith("a=") and n else a
            for a in argv for n in [a[2:]]]
    if "--json" in argv:
        argv[argv.index("--json") + 1] = str(tmp_path / "out.json")
    elif script != "minidlm/evaluate.py":
        argv += ["--json", str(tmp_path / "out.json")]
    assert_clean_error(inproc(script, *argv), needle)
    assert not measured


def test_a_study_of_a_model_trained_on_the_text_it_is_given_runs(models, small_corpus, inproc, tmp_path):
    """The rule refuses only what it must: the prose model on its own --data is measured."""
    r = inproc("studies/repeat_study.py", "--checkpoint", models["prose"], "--data", models["text"],
                   "--quick", "--rows", "none", "--prompts", "2", "--gen-length", "8", "--flow-prompts", "0",
                   "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("content", ["[]", "{}", '{"meta": {}, "rows": []}', '[{"model": "x"}]'])
def test_a_saved_file_that_is_empty_or_another_studys_is_refused(content, tmp_path, inproc):
    path = tmp_path / "saved.json"
    path.write_text(content)
    for script in ("studies/sink_compare.py", "studies/repeat_study.py", "studies/infill_study.py"):
        assert_clean_error(inproc(script, "--from-json", str(path)), "is not a")


def test_the_ablation_never_replaces_a_run_on_another_text_of_the_same_name(tmp_path, monkeypatch, capsys):
    import studies.ablation as ablation
    monkeypatch.chdir(tmp_path)
    for folder in ("a", "b"):
        os.makedirs(folder)
        (tmp_path / folder / "notes.txt").write_text("text")
    os.makedirs("runs/ablation")
    model = DiffusionLM(ModelConfig(vocab_size=300, n_layer=1, n_head=2, d_model=16, max_seq_len=16))
    tok = Tokenizer.train(STORIES[:20], vocab_size=300)
    save_model("runs/ablation/notes-default-0.pt", model, tok, {"args": {"data": "a/notes.txt"}})
    ablation.check_runs(["runs/ablation/notes-default-0"], "a/notes.txt")  # its own text: reused
    with pytest.raises(SystemExit) as e:
        ablation.check_runs(["runs/ablation/notes-default-0"], "b/notes.txt")
    assert e.value.code == 2 and "is a run on a/notes.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the embedded corpus's runs are not a user's either
        ablation.check_runs(["runs/ablation/notes-default-0"], None)
    with pytest.raises(SystemExit):  # --data that is one of the ablation's own outputs
        ablation.check_runs(["runs/ablation/x-default-0"], "runs/ablation/x-default-0.log")
    assert "would destroy that input" in capsys.readouterr().err


# ---- sizes: a hole too large for an integer, a model too large for the machine ----------------


@pytest.mark.parametrize("hole", ["99999999999999999999999", "9" * 5000, "65537"])
def test_a_hole_longer_than_any_context_is_one_line(hole, checkpoint_fixture, script_run):
    assert_clean_error(script_run("sample.py", "--checkpoint", str(checkpoint_fixture), "--prompt",
                                  f"a <|hole:{hole}|> b"), "longer than any model's context")


@pytest.mark.parametrize("flags", [["--d-model", "65536", "--n-layer", "1024"], ["--d-model", "16384", "--n-layer", "64"],
                                   ["--batch-size", "65536", "--seq-len", "65536"]])
def test_a_model_or_batch_too_large_for_the_machine_is_refused_before_building(flags, script_run, tmp_path):
    r = script_run("train_tiny.py", "--out", str(tmp_path / "m.pt"), "--threads", "1", *flags)
    assert_clean_error(r, "needs at least")
    assert "this cpu has" in r.stderr and not os.listdir(tmp_path)


def test_the_size_estimate_bounds_the_real_parameter_count_from_below_for_the_recipe():
    for argv in ([], ["--sink"], ["--d-model", "64", "--n-layer", "3", "--vocab-size", "500"]):
        args = train_tiny.parse_args(argv)
        real = DiffusionLM(train_tiny.model_config(args, args.vocab_size)).num_params()
        params, _ = train_tiny.memory_needed(args)
        assert abs(params - real) <= 0.01 * real  # the count, not a guess
    train_tiny.check_size(train_tiny.parse_args([]), torch.device("cpu"))  # the default fits


# ---- a training state that does not fit; a full disk ------------------------------------------


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    text = tmp_path_factory.mktemp("data") / "stories.txt"
    text.write_text("\n\n".join(generate_stories(60, seed=0)))
    out = str(tmp_path_factory.mktemp("run") / "m.pt")
    argv = ["--out", out, "--data", str(text), *TINY_RUN]
    with pytest.MonkeyPatch.context() as m:
        run, _ = run_for(argv, stop_after=2, monkeypatch=m)
    run.save()
    return argv


@pytest.mark.parametrize("change, needle", [
    (lambda s: s.pop("optimizer"), "it has no 'optimizer'"),
    (lambda s: s.update(optimizer=[]), "holds 0 optimizer state(s) where --optimizer muon keeps 2"),
    (lambda s: s.update(optimizer={"a": 1}), "holds dict optimizer state(s)"),
    (lambda s: s["optimizer"].reverse(), "does not fit this run"),
    (lambda s: s["model"].pop("embed.weight"), "does not fit this run"),
    (lambda s: s.update(mask_rng="seed"), "does not fit this run"),
])
def test_a_state_that_does_not_fit_the_run_is_one_line(change, needle, saved_run, tmp_path, capsys):
    out = saved_run[1]
    state = read(state_path(out))
    change(state)
    other = str(tmp_path / "m.pt")
    checkpoint.atomic_save(state, state_path(other))
    argv = [*saved_run, "--resume"]
    argv[1] = other
    args = train_tiny.parse_args(argv)
    with pytest.raises(SystemExit) as e:
        train_tiny.Run(args, Ranks(), torch.device("cpu"), train_tiny.resume_state(args), lambda *a, **k: None)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and err.count("\n") == 1, err


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                     OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
                                     RuntimeError("[enforce fail at inline_container.cc:672] file write failed"),
                                     RuntimeError("basic_ios::clear: iostream error")])  # a full tmpfs, for real
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_old_file(failure, tmp_path, monkeypatch, capsys):
    path = tmp_path / "m.pt"
    path.write_bytes(b"the previous version")

    def half_then_full(obj, target):
        with open(target, "wb") as f:
            f.write(b"half")
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", half_then_full)
    with pytest.raises(SystemExit) as e:
        cli.run_main(lambda: checkpoint.atomic_save({"x": 1}, str(path)))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot write {path}" in err and "the previous" in err and "is intact" in err
    assert path.read_bytes() == b"the previous version" and os.listdir(tmp_path) == ["m.pt"]


def test_a_failure_that_is_not_the_disks_is_not_called_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.torch, "save", lambda obj, target: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        checkpoint.atomic_save({"x": 1}, str(tmp_path / "m.pt"))
    assert not os.listdir(tmp_path)


def test_a_full_disk_while_training_saves_is_one_line(saved_run, tmp_path, monkeypatch, inproc):
    """train_tiny.py's periodic save on a full disk: one line naming the file, exit 1."""
    def full(obj, target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint.torch, "save", full)
    argv = list(saved_run)
    argv[1] = str(tmp_path / "n.pt")
    r = inproc("train_tiny.py", *argv, "--steps", "2", "--eval-interval", "1")
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write") and "No space left on device" in last
    assert "Traceback" not in r.stderr


# ---- several processes: one line, from the first -----------------------------------------------


def test_only_the_first_process_prints_a_refusal(monkeypatch, capsys):
    for rank, printed in (("0", True), ("1", False), ("3", False)):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as e:
            cli.die("no")
        assert e.value.code == 2 and (capsys.readouterr().err == "error: no\n") == printed
        with pytest.raises(SystemExit) as e:
            train_tiny.parse_args(["--t-min", "0.9", "--t-max", "0.1"])
        assert e.value.code == 2 and bool(capsys.readouterr().err) == printed


@pytest.mark.slow
def test_under_torchrun_a_refused_setting_is_one_line():
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train_tiny.py", "--threads", "1", "--t-min", "0.9", "--t-max", "0.1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    line = "train_tiny.py: error: --t-min 0.9 is above --t-max 0.1 (see --help)"
    assert [l for l in r.stderr.splitlines() if l.startswith(("error:", "train_tiny.py: error:"))] == [line]
    assert r.stderr.count(f"traceback : {line}") == 2, r.stderr  # torchrun's table, one row per process


def test_each_process_leaves_its_reason_in_torchruns_error_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit):
        cli.die("--batch-size 3 is the global batch")
    assert capsys.readouterr().err == ""
    assert json.loads(path.read_text())["message"]["message"] == "error: --batch-size 3 is the global batch"
