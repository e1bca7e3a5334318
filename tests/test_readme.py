"""The README's set-up commands are the ones CI runs, so they cannot drift apart."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def quick_start_commands():
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", read("README.md"), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_opens_with_sampling_and_the_test_command():
    setup, tests = quick_start_commands()
    assert "pip install -e" in setup and "python sample.py" in setup
    assert tests.startswith("python -m pytest")


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line.strip() for line in read(".ci/run").splitlines()]
    assert quick_start_commands()[1] in ci_lines
