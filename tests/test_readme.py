"""The README's test command is the one CI runs (.ci/run reads the `test-command` comment)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_test_command_comment_matches_the_shown_command():
    text = README.read_text(encoding="utf-8")
    comment = re.findall(r"^<!-- test-command: (.*) -->$", text, flags=re.M)
    assert len(comment) == 1, "exactly one <!-- test-command: ... --> line"
    after = text[text.index(comment[0]) :]
    shown = re.search(r"```bash\n(.*?)\n```", after, flags=re.S)
    assert shown and shown.group(1).strip() == comment[0].strip()


def test_readme_links_to_files_that_exist():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)\)", text):
        assert (README.parent / target).exists(), target
