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


# The pages whose tables all come from the report (docs/training.md also holds training runs
# measured by their own commands, which it prints above each table).
STUDY_PAGES = ["README.md", "docs/caches.md", "docs/sinks.md", "docs/repeat-curse.md", "docs/infilling.md",
               "docs/ar-vs-diffusion.md"]


def test_every_study_table_is_in_the_latest_report():
    """The tables of the README and the study pages are copied from studies/results/REPORT.md (python
    reproduce.py): a rerun that changes a number makes this fail until the pages are updated."""
    report = read("studies/results/REPORT.md")
    missing = []
    for page in STUDY_PAGES:
        page_tables = tables(read(page))
        assert page_tables, f"{page} has no table"
        missing += [f"{page}: " + t.splitlines()[0] + "\n" + t.splitlines()[2]
                    for t in page_tables if t not in report]
    assert not missing, "tables not in studies/results/REPORT.md:\n" + "\n\n".join(missing)


def test_every_figure_and_page_link_exists():
    for page in STUDY_PAGES + ["docs/training.md"]:
        folder = os.path.dirname(os.path.join(ROOT, page))
        for target in re.findall(r"\]\(([^)#]+\.(?:png|md))\)", read(page)):
            assert os.path.isfile(os.path.join(folder, target)), f"{page} -> {target}"


def test_readme_is_a_twenty_minute_read():
    assert len(read("README.md").splitlines()) <= 250
