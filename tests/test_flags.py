"""Every numeric flag of every script: a finite in-range value, or one clear line and exit code 2."""
import argparse
import contextlib
import importlib
import io
import math
import os
import sys

import pytest
from hypothesis import given, strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = ["train_tiny", "sample", "bench", *(f"studies.{name}" for name in
                                              ["repeat_study", "sink_compare", "reproduce", "ablation", "infill_study",
                                               "copy_study"])]
PARSERS = {name: importlib.import_module(name).build_parser for name in SCRIPTS}


def numeric_options(parser):
    """(flag, type) of every option whose value is a number."""
    return [(a.option_strings[-1], a.type) for a in parser._actions
            if a.option_strings and a.type is not None and a.type not in (str,)]


NUMERIC = [(script, flag) for script, build in PARSERS.items() for flag, _ in numeric_options(build())]

numbers_as_text = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "+inf", "1e309", "-1e309", "0", "-0", "-1", "1e18",
                     "99999999999999999999", "0.5", "1.5", "", " ", "abc", "1e-320", "0x10", "1_000"]),
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def test_every_numeric_flag_goes_through_the_checked_number_type():
    """No raw int/float: those accept nan, inf and any range."""
    raw = [(s, f) for s, b in PARSERS.items() for f, t in numeric_options(b()) if t in (int, float)]
    assert not raw and len(NUMERIC) >= 30, raw


@pytest.mark.parametrize("script,flag", NUMERIC)
@given(text=numbers_as_text)
def test_numeric_flags_take_finite_in_range_values_or_exit_2_with_one_line(script, flag, text):
    parser = PARSERS[script]()
    action = next(a for a in parser._actions if flag in a.option_strings)
    try:
        value = action.type(text)
    except argparse.ArgumentTypeError:
        value = None
    argv = [f"{flag}={text}"] + (["--sink"] if flag == "--sink-no-rotation" else [])
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as e:
        err = stderr.getvalue()
        assert e.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert value is None  # refused only what the type refuses
        return
    parsed = getattr(args, action.dest)
    parsed = parsed[0] if isinstance(parsed, list) else parsed
    assert value is not None and math.isfinite(parsed)


@pytest.mark.parametrize("argv,message", [
    (["--d-model", "100", "--n-head", "3"], "heads of even size"),
    (["--d-model", "12", "--n-head", "4"], "heads of even size"),
    (["--vocab-size", "100"], ">= 260"),
    (["--t-min", "0.9", "--t-max", "0.1"], "above --t-max"),
    (["--sink-no-rotation"], "needs --sink"),
    (["--sink-value", "zero"], "needs --sink"),
    (["--seq-len", "4"], ">= 8"),
    (["--copy-every", "10", "--data", "my.txt"], "needs the embedded corpus"),
    (["--name-share", "0.9", "--data", "my.txt"], "drop --data"),
])
def test_impossible_model_settings_are_refused_up_front(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        importlib.import_module("train_tiny").parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err


def test_a_temperature_so_small_that_logits_over_t_overflow_is_refused(capsys):
    """--temperature 1e-320 made logits / T inf, and argmax took the first inf, not the largest
    logit. Refused in one line; from MIN_TEMPERATURE on, sampling is the greedy choice."""
    import torch
    from minidlm.sampler import MIN_TEMPERATURE, SamplerConfig, choose_tokens
    with pytest.raises(SystemExit) as e:
        importlib.import_module("sample").parse_args(["--temperature", "1e-320"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "0 decodes greedily" in err and err.count("\n") == 1, err
    with pytest.raises(ValueError, match="0 .greedy."):
        SamplerConfig(temperature=1e-320).validate(1, 1024)
    logits = torch.randn(4, 16, 300) * 20
    g = torch.Generator().manual_seed(0)
    assert torch.equal(choose_tokens(logits, MIN_TEMPERATURE, g), logits.argmax(-1))


BOOLEAN_FLAGS = [(script, a.option_strings) for script, build in PARSERS.items() for a in build()._actions
                 if isinstance(a, argparse.BooleanOptionalAction)]


@given(st.sampled_from(BOOLEAN_FLAGS), st.integers(0, 1), st.integers(0, 4), st.booleans())
def test_given_options_names_a_flag_as_the_user_spelled_it(flag, which, cut, twice):
    """A refusal quotes the option that was typed: --no-plain-ce, not --plain-ce; an abbreviation
    by the full spelling it stands for; of a flag given twice, the last (the one argparse keeps)."""
    from minidlm.cli import given_options
    script, spellings = flag
    parser = PARSERS[script]()
    spelled = spellings[which]
    typed = spelled[:max(len(spelled) - cut, 3)]
    if len([o for a in parser._actions for o in a.option_strings if o.startswith(typed)]) != 1:
        typed = spelled  # an ambiguous abbreviation argparse would refuse
    dest = next(a.dest for a in parser._actions if a.option_strings == spellings)
    with contextlib.redirect_stderr(io.StringIO()):
        got = given_options(parser, ([spellings[1 - which]] if twice else []) + [typed])
    assert got[dest] == spelled


def test_given_options_names_an_option_with_a_value_by_its_full_spelling():
    from minidlm.cli import given_options
    parser = PARSERS["train_tiny"]()
    assert given_options(parser, ["--t-ma=0.9", "--steps", "3"]) == {"t_max": "--t-max", "steps": "--steps"}
