"""The README's set-up commands are what CI runs, word for word."""
import re

from conftest import REPO


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
    assert "search.run --study smoke" in install and "pytest" in tests
