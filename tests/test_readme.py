"""The README's set-up commands are what CI runs, word for word, and the first one runs the demo study."""
import re

from conftest import REPO
from search import study as studies


def readme_bash_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    setup = text[text.index("## Set-up"): text.index("## Running a study")]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)]


def test_ci_runs_the_readmes_two_setup_commands_verbatim():
    blocks = readme_bash_blocks()
    assert len(blocks) == 2 and all("\n" not in b for b in blocks), "two one-line set-up commands"
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    install, tests = blocks
    assert install in ci_lines and tests in ci_lines
    assert ci_lines.index(install) < ci_lines.index(tests)
    assert "pytest" in tests


def test_the_first_command_runs_the_demo_study_on_a_cpu_maximising_accuracy_and_the_readme_names_its_report():
    install = readme_bash_blocks()[0]
    name = re.fullmatch(r".* && \.venv/bin/python -m search\.run --study (\w+)", install).group(1)
    spec = studies.load(name)  # a valid study in studies/ (a wrong key or range raises)
    assert name == "demo"
    # A fresh clone's first look: nothing to download, no GPU needed, and accuracy as the default study scores it.
    assert spec.recipe["data"] == "synthetic" and spec.resources.gpus == 0 and spec.recipe["device"] == "cpu"
    assert spec.metric == studies.load("default").metric == "eval_acc"
    # The seed recipe (trial 0) learns inside the searched ranges, and a learning rate far from it is searched too.
    assert spec.space["lr"].low * 10 <= spec.seed_params()["lr"] <= spec.space["lr"].high / 10
    assert f"`results/{name}/report.html`" in (REPO / "README.md").read_text()
