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


def tables(text):
    """Every markdown table in `text`: runs of consecutive lines that start with '|'."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            found.append("\n".join(current))
            current = []
    return found


def test_every_readme_table_is_in_the_latest_report():
    """The README's tables are copied from results/REPORT.md (python reproduce.py): a rerun that
    changes a number makes this fail until the README is updated from the report."""
    report = read("results/REPORT.md")
    readme_tables = tables(read("README.md"))
    assert len(readme_tables) >= 5
    missing = [t.splitlines()[0] + "\n" + t.splitlines()[2] for t in readme_tables if t not in report]
    assert not missing, "README tables not in results/REPORT.md:\n" + "\n\n".join(missing)


def test_every_readme_figure_exists():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", read("README.md")):
        assert os.path.isfile(os.path.join(ROOT, path)), path
