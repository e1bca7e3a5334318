"""The scripts end bad input with one line and exit code 2, and never lose a written checkpoint.

Each command-line case runs twice: in this process (the script's main() with sys.argv set, its
exit code from SystemExit, its output from capsys), in the fast suite, and as a real subprocess,
marked slow (each one imports torch anew, about a second). A few cases run as subprocesses in the
fast suite too, so that the true command line of sample.py and train_tiny.py is checked there."""
import importlib
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from minidlm.checkpoint import CheckpointError, load_model, save_model
from minidlm.cli import run_main
from minidlm.evaluate import plateau_warning
from minidlm.model import DiffusionLM, ModelConfig
from minidlm.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # sample, train_tiny and studies import as modules for in-process runs
TEXT = "\n\n".join(f"Story {i}. The cat sat on the mat and looked at the {w} sky. It was good."
                   for i, w in enumerate(["blue", "grey", "red", "dark", "bright"] * 20))
TINY = ["--n-layer", "1", "--d-model", "16", "--n-head", "2", "--seq-len", "32",
        "--batch-size", "2", "--vocab-size", "300", "--eval-mc", "1", "--threads", "1"]


def module_of(script):
    """sample.py -> sample, studies/infill_study.py -> studies.infill_study."""
    return script[:-3].replace("/", ".")


def run(script, *args):
    """`python script ...` from the repository root; a study (or a minidlm module) as
    `python -m studies.NAME ...`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    target = ["-m", module_of(script)] if script.startswith(("studies/", "minidlm/")) else [script]
    return subprocess.run([sys.executable, *target, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(params=["in-process", pytest.param("subprocess", marks=pytest.mark.slow)])
def script_run(request, capsys, monkeypatch):
    """`run`, or the same command in this process: the script's main() as `python script` runs it
    (run_main), from the repository root, with the same exit code, stdout and stderr."""
    return run if request.param == "subprocess" else in_process_runner(capsys, monkeypatch)


def in_process_runner(capsys, monkeypatch):
    """script_run's in-process way alone (for tests that replace part of a script)."""
    def in_process(script, *args):
        module = importlib.import_module(module_of(script))
        monkeypatch.chdir(ROOT)
        monkeypatch.setattr(sys, "argv", [script, *args])
        threads = torch.get_num_threads()
        capsys.readouterr()
        try:
            if module.__name__ == "minidlm.prose":
                module.main()  # its main is what `python -m minidlm.prose` runs
            else:
                run_main(module.main)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (e.code is not None)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        finally:
            torch.set_num_threads(threads)  # train_tiny.py's --threads
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([script, *args], int(code), out, err)
    return in_process


def assert_clean_error(result, needle):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    tok = Tokenizer.train([TEXT], vocab_size=300)
    torch.manual_seed(0)
    model = DiffusionLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16,
                                    max_seq_len=48))
    save_model(str(path), model, tok, {"command": "test"})
    return path


def test_checkpoint_round_trip(checkpoint):
    model, tok, meta = load_model(str(checkpoint))
    assert meta["command"] == "test" and model.cfg.vocab_size == tok.vocab_size


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncate"])
def test_broken_checkpoints_raise_checkpoint_error(checkpoint, tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(checkpoint.read_bytes()[:200] if content == "truncate" else content)
    with pytest.raises(CheckpointError):
        load_model(str(bad))


def test_foreign_checkpoint_is_incompatible(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a minidlm"):
        load_model(str(tmp_path / "foreign.pt"))


@pytest.mark.parametrize("args, needle", [
    (["--checkpoint", "no/such/file.pt"], "not found"),
    (["--gen-length", "30"], "not divisible by block length"),
    (["--steps", "5"], "not divisible by the number of blocks"),
    (["--temperature", "-1"], "temperature"),
    (["--prompt", "the cat " * 40], "exceeds the model's context"),
    (["--steps", "zero"], "expected an integer"),
    (["--device", "quantum"], "unknown device"),
])
def test_sample_bad_input_is_one_line_and_exit_2(checkpoint, args, needle, script_run):
    args = args if "--checkpoint" in args else ["--checkpoint", str(checkpoint), *args]
    assert_clean_error(script_run("sample.py", "--gen-length", "16", "--block-length", "8", "--steps", "16", *args),
                       needle)


@pytest.mark.parametrize("args, needle", [
    (["--threshold", "0"], "expected a number > 0 and <= 1"),
    (["--threshold", "1.01"], "expected a number > 0 and <= 1"),
    (["--threshold", "0.9", "--remasking", "random"], "no confidence threshold can judge"),
    (["--threshold", "0.9", "--steps", "16"], "drop --steps"),
    (["--threshold", "0.9", "--cota"], "for --threshold pick the cache yourself"),
])
def test_threshold_bad_input_is_one_line_and_exit_2(checkpoint, args, needle, script_run):
    assert_clean_error(script_run("sample.py", "--checkpoint", str(checkpoint), "--gen-length", "16", *args), needle)


def test_threshold_decoding_reports_the_steps_it_took(checkpoint, script_run):
    result = script_run("sample.py", "--checkpoint", str(checkpoint), "--gen-length", "16", "--block-length", "8",
                        "--threshold", "1e-9", "--cache", "dual", "--prompt", "a <|hole:8|> b")
    assert result.returncode == 0, result.stderr
    assert "1 x 8 tokens in 1 steps (threshold 1e-09)" in result.stderr  # below every confidence: one step


@pytest.mark.parametrize("args, needle", [
    (["--prompt", "a <|hole|> b"], "malformed hole placeholder"),
    (["--prompt", "a <|hole:two|> b"], "malformed hole placeholder"),
    (["--prompt", "a <|hole:0|> b"], "a hole of 0 tokens"),
    (["--prompt", "the cat <|hole:60|> sat"], "exceeds the model's context"),
    (["--prompt", "the cat", "--suffix", "sat", "--gen-length", "0"], "expected an integer >= 1"),
    (["--prompt", "a <|hole:4|> b", "--prompt", "no hole here"], "has no hole"),
    (["--prompt", "a <|hole:4|> b", "--sinks"], "--sinks probes continuation"),
    (["--prompt", "a <|hole:4|> b", "--block-length", "3"], "not divisible by block length"),
    (["--prompt", "a", "--suffix", "b <|hole:x|>"], "malformed hole placeholder"),
])
def test_infill_bad_input_is_one_line_and_exit_2(checkpoint, args, needle, script_run):
    assert_clean_error(script_run("sample.py", "--checkpoint", str(checkpoint), *args), needle)


def test_infill_fills_every_hole_and_keeps_the_given_text(checkpoint):
    """Several texts with different hole layouts and counts, --suffix, --show: the given text
    comes back around the filled holes, in the order given. Real subprocesses, in the fast suite
    (--show's view writes to the sys.stderr of when minidlm.show was imported, not capsys's)."""
    r = run("sample.py", "--checkpoint", str(checkpoint), "--prompt", "The cat <|hole:3|> sat. <|hole:2|>",
            "--prompt", "<|hole:4|> dog", "--show", "--show-delay", "0", "--cache", "dual")
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.strip().split("\n\n")
    assert first.startswith("The cat") and " sat." in first and second.endswith(" dog"), r.stdout
    assert "step" in r.stderr and r.stderr.count("tok/s") == 2
    r = run("sample.py", "--checkpoint", str(checkpoint), "--prompt", "The cat", "--suffix", "The end.",
            "--gen-length", "6", "--cota", "--cache", "none")  # without --cache, --cota is the lesson
    assert r.returncode == 0 and r.stdout.startswith("The cat") and r.stdout.strip().endswith("The end."), r.stderr


@pytest.mark.slow
def test_infill_study_prints_both_contexts_and_reprints_its_json(checkpoint, tmp_path):
    out, model = tmp_path / "infill.json", tmp_path / "long.pt"
    tok = Tokenizer.train([TEXT], vocab_size=300)  # a context that holds the stories (the 48-token one holds none)
    save_model(str(model), DiffusionLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16,
                                                   max_seq_len=1024)), tok, {"command": "test"})
    r = run("studies/infill_study.py", "--checkpoint", str(model), "--stories", "6", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("| both sides |") == 2 and r.stdout.count("| left only |") == 2
    again = run("studies/infill_study.py", "--from-json", str(out))
    assert again.returncode == 0 and again.stdout == r.stdout
    assert_clean_error(run("studies/infill_study.py", "--from-json", str(checkpoint)), "not a table written by")


def test_sample_truncated_checkpoint(checkpoint, tmp_path):  # a real subprocess in the fast suite
    bad = tmp_path / "cut.pt"
    bad.write_bytes(checkpoint.read_bytes()[:1000])
    assert_clean_error(run("sample.py", "--checkpoint", str(bad)), "cannot read checkpoint")


def test_sample_writes_text_to_stdout_and_stats_to_stderr(checkpoint):  # a real subprocess too
    r = run("sample.py", "--checkpoint", str(checkpoint), "--prompt", "The cat", "--gen-length", "16",
            "--steps", "16", "--block-length", "8", "--temperature", "1", "--num-samples", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("The cat") == 2 and "tok/s" in r.stderr and "tok/s" not in r.stdout


@pytest.mark.parametrize("content, needle", [("", "empty"), ("\x00\x01binary" * 300, "binary"),
                                             ("too short", "needs 2000")])
def test_train_bad_data_is_one_line_and_exit_2(tmp_path, content, needle, script_run):
    data = tmp_path / "data.txt"
    data.write_text(content)
    assert_clean_error(script_run("train_tiny.py", "--data", str(data), "--out", str(tmp_path / "m.pt")), needle)


@pytest.mark.slow
def test_train_resume_and_no_overwrite(tmp_path):
    data, out = tmp_path / "data.txt", tmp_path / "m.pt"
    data.write_text(TEXT)
    r = run("train_tiny.py", "--data", str(data), "--out", str(out), "--steps", "4",
            "--eval-interval", "2", *TINY)
    assert r.returncode == 0, r.stderr
    assert load_model(str(out))[2]["step"] == 4
    before = out.read_bytes()
    assert_clean_error(run("train_tiny.py", "--data", str(data), "--out", str(out), *TINY), "exists")
    assert out.read_bytes() == before  # refusing to start lost nothing
    r = run("train_tiny.py", "--data", str(data), "--out", str(out), "--steps", "6", "--resume", *TINY)
    assert r.returncode == 0 and "resuming" in r.stderr, r.stderr
    assert load_model(str(out))[2]["step"] == 6


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_checkpoint_readable(tmp_path):
    data, out = tmp_path / "data.txt", tmp_path / "m.pt"
    data.write_text(TEXT)
    r = run("train_tiny.py", "--data", str(data), "--out", str(out), "--steps", "50",
            "--eval-interval", "1", "--lr", "1000", "--muon-lr", "1000", *TINY)
    assert r.returncode == 1 and "loss became" in r.stderr, r.stderr
    load_model(str(out))  # whatever was last saved is a complete, readable file


@pytest.mark.slow
def test_repeat_study_on_a_users_text_drops_the_grammar_column(tmp_path):
    data, model = tmp_path / "mine.txt", tmp_path / "mine.pt"
    data.write_text(TEXT)
    tok = Tokenizer.train([TEXT], vocab_size=300)  # a model of this text (the shipped ones are refused)
    save_model(str(model), DiffusionLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16,
                                                   max_seq_len=64)), tok, {"command": "test", "args": {"data": str(data)}})
    out = tmp_path / "rows.json"
    r = run("studies/repeat_study.py", "--checkpoint", str(model), "--data", str(data), "--prompts", "2", "--seeds", "0", "--gen-length", "8",
            "--rows", "stale-first", "--flow-prompts", "0", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["mode"].startswith("feature, stale-first") and {"ARR", "SRR"} <= set(rows[0])
    assert "grammatical" not in r.stdout


@pytest.mark.slow
def test_repeat_study_over_model_seeds_prints_mean_and_sd_and_reprints_it(tmp_path):
    out, copy = tmp_path / "rows.json", tmp_path / "tiny-copy.pt"
    copy.write_bytes(open(os.path.join(ROOT, "checkpoints/tiny.pt"), "rb").read())  # the same file twice is refused
    r = run("studies/repeat_study.py", "--checkpoint", "checkpoints/tiny.pt", str(copy), "--prompts", "2",
            "--seeds", "0", "--gen-length", "8", "--rows", "dual", "--flow-prompts", "0", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "mean +- sd over 2 models" in r.stdout and "| dual | 0.00 +- 0.00 |" in r.stdout
    again = run("studies/repeat_study.py", "--from-json", str(out))
    assert again.returncode == 0 and again.stdout == r.stdout, again.stderr


@pytest.mark.slow
def test_sink_compare_writes_rows_with_the_promised_fields(tmp_path):
    out = tmp_path / "cmp.json"
    r = run("studies/sink_compare.py", "--arm", "base=checkpoints/tiny.pt", "--arm", "sink=checkpoints/tiny-sink.pt",
            "--prompts", "2", "--windows", "2", "--mc", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    row, sink = json.loads(out.read_text())
    assert row["model"] == "base" and {"nelbo", "switch_rate", "sink_mass"} <= set(row)
    assert row["nelbo_sink_masked"] is None and sink["nelbo_sink_masked"] > 0  # the ablation: sink models only
    assert "[SINK] masked" in r.stdout.splitlines()[0]
    assert_clean_error(run("studies/sink_compare.py", "--arm", "base=no/such.pt"), "not found")
    again = run("studies/sink_compare.py", "--from-json", str(out))  # re-renders without measuring
    assert again.returncode == 0 and again.stdout.splitlines()[2] == r.stdout.splitlines()[2]
    assert_clean_error(run("studies/sink_compare.py", "--from-json", "README.md"), "not a comparison")


def test_ctar_runs_with_the_feature_cache_and_says_when_it_has_nothing_to_repair(checkpoint, script_run):
    r = script_run("sample.py", "--checkpoint", str(checkpoint), "--gen-length", "8", "--steps", "8",
            "--block-length", "8", "--cache", "feature", "--ctar", "--ctev", "--ctev-mode", "context")
    assert r.returncode == 0 and "CTAR w 5" in r.stderr, r.stderr
    r = script_run("sample.py", "--checkpoint", str(checkpoint), "--gen-length", "8", "--steps", "8",
                   "--block-length", "8", "--ctar")
    assert r.returncode == 0 and "changes nothing here" in r.stderr, r.stderr


@pytest.mark.parametrize("script", ["train_tiny.py", "bench.py", "studies/ar_compare.py", "studies/copy_study.py",
                                    "studies/sink_compare.py"])
def test_every_script_refuses_a_device_it_cannot_have_in_one_line(script, script_run):
    assert_clean_error(script_run(script, "--device", "quantum"), "unknown device")


def test_bench_compile_table_reprints_from_json_with_the_default_as_its_yardstick(tmp_path, script_run):
    import json
    row = dict(batch=1, rule="fixed", eager_tok_s=40.0, first_call_s=20.0, graphs=1, same_tokens=True)
    rows = [dict(row, sampler="none", compiled_tok_s=50.0, ratio=1.25),
            dict(row, sampler="dual", eager_tok_s=60.0, compiled_tok_s=90.0, ratio=1.5, graphs=2)]
    (tmp_path / "c.json").write_text(json.dumps({"header": "device cpu", "rows": rows}))
    r = script_run("bench.py", "--compile", "--from-json", str(tmp_path / "c.json"))
    assert r.returncode == 0 and "| 1 | dual | fixed | 60 | 90 | 1.50x | 2.25x | 20.0 | 2 | yes |" in r.stdout, r.stdout
    assert_clean_error(script_run("bench.py", "--from-json", str(tmp_path / "c.json")), "add --compile")
    (tmp_path / "bad.json").write_text("{}")
    assert_clean_error(script_run("bench.py", "--compile", "--from-json", str(tmp_path / "bad.json")), "not a table")


def test_reproduce_rejects_bad_flags_in_one_line(script_run):
    assert_clean_error(script_run("studies/reproduce.py", "--fast"), "unrecognized arguments")


def test_reproduce_only_replaces_just_the_rerun_sections_and_keeps_the_order(tmp_path):
    """--only: the sections rerun take the place of their old text, the others stay byte for byte,
    a stage the report lacked comes last, and the header says what was rerun."""
    from studies import reproduce
    path = tmp_path / "REPORT.md"
    path.write_text("# report\n\nWritten by `x`. Every table below is the stdout of the command shown above it.\n\n"
                    "## A\n\n`python a`\n\nold a\n\n## B\n\n`python b`\n\nold b | table\n")
    log = [("B", "python b --new", 3.0, "new b"), ("C", "python c", 1.0, "new c"), ("A2", "python a2", 1.0, "a2")]
    reproduce.splice_report(str(path), log, 0.0, order=["A", "A2", "B", "C"])
    header, sections = reproduce.split_report(path.read_text())
    assert [t for t, _ in sections] == ["A", "A2", "B", "C"]
    assert sections[0][1] == "## A\n\n`python a`\n\nold a"
    assert "new b" in sections[2][1] and "old b" not in sections[2][1] and "python b --new" in sections[2][1]
    assert "Sections rerun alone by" in header and "'B'; 'C'; 'A2'." in header and "Written by `x`" in header
    assert path.read_text().endswith("new c\n")


@pytest.mark.parametrize("words", [["no such stage"], ["Sampler benchmark", "Infiling"]])
def test_reproduce_only_refuses_a_title_no_stage_has(words, script_run):
    assert_clean_error(script_run("studies/reproduce.py", "--only", *words), "no stage's title")


@pytest.mark.slow
def test_retrain_reruns_the_recorded_command_and_swaps_the_result_in(tmp_path, monkeypatch):
    """reproduce.py --retrain: train into runs/retrain/, then replace the checkpoint, keeping the
    recorded command; the same seed gives the same weights."""
    from minidlm.checkpoint import read
    from studies import reproduce
    text, path = tmp_path / "text.txt", tmp_path / "model.pt"
    text.write_text(TEXT)
    r = run("train_tiny.py", "--out", str(path), "--steps", "2", "--data", str(text), *TINY)
    assert r.returncode == 0, r.stderr
    before = read(str(path))
    monkeypatch.chdir(ROOT)
    reproduce.retrain([str(path)], [])
    after = read(str(path))
    assert after["meta"]["command"] == before["meta"]["command"]
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])


def test_plateau_warning_says_when_a_model_learned_only_word_frequencies():
    plateau = {"unigram_bits_per_token": 8.66, "metrics": {"val_bits_per_token": 8.68}}
    learned = {"unigram_bits_per_token": 8.66, "metrics": {"val_bits_per_token": 6.9}}
    in_training = {"unigram_bits_per_token": 8.66, "evals": [{"bits": 8.5}]}  # saved mid-run
    assert "has not learned" in plateau_warning(plateau) and "8.68" in plateau_warning(plateau)
    assert plateau_warning(learned) is None and plateau_warning({}) is None  # old checkpoints: silent
    assert "has not learned" in plateau_warning(in_training)


def test_sample_warns_on_stderr_for_a_model_on_the_plateau(tmp_path, script_run):
    path = tmp_path / "plateau.pt"
    tok = Tokenizer.train([TEXT], vocab_size=300)
    model = DiffusionLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, max_seq_len=48))
    save_model(str(path), model, tok, {"command": "test", "unigram_bits_per_token": 5.0,
                                       "metrics": {"val_bits_per_token": 5.1}})
    r = script_run("sample.py", "--checkpoint", str(path), "--gen-length", "16", "--block-length", "8",
                   "--steps", "16")
    assert r.returncode == 0 and "has not learned to use context" in r.stderr and "warning" not in r.stdout


@pytest.mark.slow
def test_ctrl_c_saves_the_current_step_and_prints_the_resume_command(tmp_path):
    import signal
    data, out = tmp_path / "data.txt", tmp_path / "m.pt"
    data.write_text(TEXT)
    argv = [sys.executable, os.path.join(ROOT, "train_tiny.py"), "--data", str(data), "--out", str(out),
            "--steps", "100000", "--eval-interval", "100000", *TINY]
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # wait until training has taken steps
        if line.startswith("step 25 "):
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130 and "Traceback" not in rest, rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith("interrupted at step") and last.endswith("--resume"), last
    step = int(last.split()[3].rstrip(":"))
    assert step >= 25 and load_model(str(out))[2]["step"] == step  # nothing since the last save lost
    resume = last.split("continue with: ")[1].split()[1:]  # drop "python"
    resume[resume.index("--steps") + 1] = str(step + 2)
    r = subprocess.run([sys.executable, *resume], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"resuming {out} at step {step}" in r.stderr, r.stderr
    assert load_model(str(out))[2]["step"] == step + 2


def test_unwritable_out_is_refused_before_any_work(tmp_path, script_run):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = run("train_tiny.py", "--out", str(blocker / "sub" / "m.pt"), *TINY)  # a real subprocess in the fast suite
    assert_clean_error(r, "cannot write")
    assert "data:" not in r.stderr  # refused before loading or tokenising anything
    assert_clean_error(script_run("train_tiny.py", "--out", str(tmp_path), *TINY), "is a folder")


@pytest.mark.parametrize("writer", ["checkpoint", "json", "figure"])
def test_a_save_that_fails_half_way_leaves_the_old_file_and_no_debris(writer, tmp_path, monkeypatch):
    """The atomic writes: a crash after half the bytes keeps the previous file intact."""
    from minidlm import checkpoint, cli, files
    path = tmp_path / {"checkpoint": "a.pt", "json": "a.json", "figure": "a.png"}[writer]
    path.write_bytes(b"the previous version")

    def half_then_crash(obj, f, *args, **kwargs):
        f = f if hasattr(f, "write") else open(f, "wb")
        f.write("half" if isinstance(f, io.TextIOBase) else b"half")
        raise OSError("disk full")

    if writer == "checkpoint":
        monkeypatch.setattr(checkpoint.torch, "save", half_then_crash)
        call = lambda: checkpoint.atomic_save({"x": 1}, str(path))
    elif writer == "json":
        monkeypatch.setattr(files.json, "dump", half_then_crash)
        call = lambda: files.write_json(str(path), {"x": 1})
    else:
        class Figure:
            def savefig(self, target, dpi):
                half_then_crash(None, target)
        call = lambda: cli.save_figure(Figure(), str(path))
    with pytest.raises(OSError, match="disk full"):
        call()
    assert path.read_bytes() == b"the previous version"
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.slow
def test_prose_writes_the_documentation_that_ships_with_python(tmp_path):
    out = tmp_path / "sub" / "pydoc.txt"
    r = subprocess.run([sys.executable, "-m", "minidlm.prose", "pydoc", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(out.read_text(encoding="utf-8")) > 10_000


def test_prose_refuses_a_folder_as_its_output(tmp_path, script_run):
    assert_clean_error(script_run("minidlm/prose.py", "pydoc", str(tmp_path)), "folder")


@pytest.mark.parametrize("content, needle", [
    ("folder", "is a folder, not a file"),
    ("truncate", "it is truncated"),
    ("cut-end", "it is truncated"),
    (b"", "the file is empty"),
    (b"\x8f\x13 random bytes \x00\xff" * 50, "not a minidlm checkpoint"),
    ("pickle", "not a minidlm checkpoint"),
    ("objects", "not a minidlm checkpoint"),
])
def test_a_broken_checkpoint_says_what_is_wrong_in_one_line(checkpoint, tmp_path, content, needle, script_run):
    import pickle
    bad = tmp_path / "bad.pt"
    good = checkpoint.read_bytes()
    if content == "folder":
        bad.mkdir()
    elif content == "objects":  # a torch file, but of some other program: weights_only refuses it
        torch.save({"layer": torch.nn.Linear(2, 2)}, bad)
    else:
        bad.write_bytes({"truncate": good[:1000], "cut-end": good[:-10],
                         "pickle": pickle.dumps({"a": 1})}.get(content, content))
    with pytest.raises(CheckpointError, match=needle):
        load_model(str(bad))
    r = script_run("sample.py", "--checkpoint", str(bad), "--gen-length", "8")
    assert_clean_error(r, needle)
    assert "weights_only" not in r.stderr and "Errno" not in r.stderr


@pytest.mark.parametrize("meta, needle", [([1, 2], "metadata is a list"), ({"args": ["--data"]}, "'args' is a list"),
                                          ({"metrics": 3.5}, "'metrics' is a float")])
def test_checkpoint_metadata_of_the_wrong_type_is_one_line(tmp_path, meta, needle, script_run):
    path = tmp_path / "odd.pt"
    tok = Tokenizer.train([TEXT], vocab_size=300)
    save_model(str(path), DiffusionLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16,
                                                  max_seq_len=48)), tok, meta)
    assert_clean_error(script_run("sample.py", "--checkpoint", str(path), "--cota"), needle)


def test_checkpoint_metadata_without_args_is_fine(checkpoint, script_run):
    """Older checkpoints lack fields; the scripts read each with a default (the --cota lesson and
    the studies read meta['args'])."""
    r = script_run("sample.py", "--checkpoint", str(checkpoint), "--cota", "--gen-length", "8")
    assert r.returncode == 0, r.stderr


def test_resume_from_a_state_without_what_training_needs_is_one_line(tmp_path, script_run):
    from minidlm.checkpoint import atomic_save, state_path
    data, out = tmp_path / "data.txt", tmp_path / "m.pt"
    data.write_text(TEXT)
    atomic_save({"args": {"out": str(out)}, "step": 3}, state_path(str(out)))
    r = script_run("train_tiny.py", "--data", str(data), "--out", str(out), "--resume", *TINY)
    assert_clean_error(r, "not a training state saved by train_tiny.py (it has no 'model')")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-16-be-bom", "utf-32"])
def test_utf16_and_bom_text_is_read_as_text(tmp_path, encoding):
    """Windows PowerShell's `>` writes UTF-16-LE with a byte-order mark; Notepad wrote UTF-8 with one."""
    import codecs
    from minidlm.corpus import load_text_file
    plain, mine = tmp_path / "plain.txt", tmp_path / "mine.txt"
    plain.write_bytes(TEXT.encode("utf-8"))
    body = TEXT.replace("\n", "\r\n")
    mine.write_bytes(codecs.BOM_UTF16_BE + body.encode("utf-16-be") if encoding == "utf-16-be-bom"
                     else body.encode(encoding))
    assert load_text_file(str(mine)) == load_text_file(str(plain))


def test_sink_levers_under_sh_says_run_it_with_bash():
    r = subprocess.run(["sh", "studies/sink_levers.sh", "default"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and r.stderr.strip() == "error: run it with bash: bash studies/sink_levers.sh LEVER..."


def test_a_held_out_text_too_short_to_measure_is_refused_or_cut_into_two_windows(tmp_path, script_run):
    """One window gave 'val NELBO 7.9 +- nan': the error bar needs two. A held-out text under two
    windows of 32 tokens is refused before training; one under two --seq-len windows is cut into
    two shorter windows, and says so."""
    data, out = tmp_path / "one.txt", tmp_path / "m.pt"
    data.write_text(" ".join(f"The cat number {i} sat on the mat and looked at the sky." for i in range(60)))
    assert_clean_error(script_run("train_tiny.py", "--data", str(data), "--out", str(out), *TINY),
                       "has only")
    data.write_text(TEXT)  # 5 held-out stories: about 130 tokens, under two windows of 128
    r = script_run("train_tiny.py", "--data", str(data), "--out", str(out), "--steps", "1",
                   *TINY[:6], "--seq-len", "128", *TINY[8:])
    assert r.returncode == 0, r.stderr
    assert "validating on windows of" in r.stderr and "nan" not in r.stderr, r.stderr


def test_frontier_prints_every_setting_and_reprints_its_json(checkpoint, tmp_path, script_run):
    path = tmp_path / "frontier.json"
    result = script_run("studies/frontier.py", "--checkpoint", str(checkpoint), "--gen-length", "8",
                        "--block-length", "4", "--prompts", "2", "--speed-prompts", "1", "--thresholds",
                        "0.5,0.9", "--caches", "dual", "--threads", "1", "--json", str(path))
    assert result.returncode == 0, result.stderr
    rows = json.loads(path.read_text())["rows"]
    assert [(r["cache"], r["threshold"]) for r in rows] == [("none", None), ("dual", None), ("dual", 0.5), ("dual", 0.9)]
    assert rows[0]["speedup_b1"] == 1.0 and all(r["steps_per_token_b1"] <= 1.0 for r in rows)
    again = script_run("studies/frontier.py", "--from-json", str(path))
    assert again.returncode == 0 and again.stdout.splitlines()[1:] == result.stdout.splitlines()[1:]


@pytest.mark.parametrize("args, needle", [
    (["--thresholds", "0.9,1.5"], "--thresholds must be within (0, 1]"),
    (["--thresholds", "a"], "numbers separated by commas"),
    (["--caches", "dual,lru"], "--caches takes some of"),
    (["--prompts", "2", "--speed-prompts", "3"], "exceeds --prompts"),
])
def test_frontier_bad_input_is_one_line_and_exit_2(checkpoint, args, needle, script_run):
    assert_clean_error(script_run("studies/frontier.py", "--checkpoint", str(checkpoint), *args), needle)


def test_copy_study_heads_is_a_measurement_not_a_reprint(tmp_path, script_run):
    saved = tmp_path / "c.json"
    saved.write_text("{}")
    assert_clean_error(script_run("studies/copy_study.py", "--heads", "--from-json", str(saved)),
                       "--heads measures")
