"""docs/cli.md and docs/config.md are generated from the code; these tests fail when they drift."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("reference_docs", ROOT / "scripts" / "reference_docs.py")
assert _spec and _spec.loader
reference_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference_docs)


@pytest.mark.parametrize("page", sorted(reference_docs.PAGES))
def test_committed_page_matches_the_code(page):
    committed = (ROOT / "docs" / page).read_text()
    assert committed == reference_docs.PAGES[page](), \
        "docs/%s is stale: run python scripts/reference_docs.py and commit it" % page


def test_every_config_field_has_a_docstring():
    assert reference_docs.missing_field_docs() == []


def test_every_option_and_field_appears_in_its_page():
    import click

    from aitune_triton.cli import main

    cli_md = (ROOT / "docs" / "cli.md").read_text()
    for path, cmd in reference_docs._commands(main, "aitune-triton"):
        assert "## `%s`" % path.removeprefix("aitune-triton ") in cli_md
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert all(opt in cli_md for opt in param.opts), (path, param.opts)
    config_md = (ROOT / "docs" / "config.md").read_text()
    for cls in reference_docs.config_classes():
        for f in dataclasses.fields(cls):
            assert "| `%s` |" % f.name in config_md, (cls.__name__, f.name)


def test_field_docs_reads_the_docstring_under_each_field():
    @dataclasses.dataclass
    class Example:
        documented: int = 1
        """The doc."""
        undocumented: int = 2

    assert reference_docs.field_docs(Example) == {"documented": "The doc."}


def test_check_mode_names_a_stale_page(tmp_path, monkeypatch):
    monkeypatch.setattr(reference_docs, "DOCS", tmp_path)
    (tmp_path / "cli.md").write_text("old\n")
    assert reference_docs.stale_pages() == ["cli.md", "config.md"]


def test_the_script_runs_in_check_mode():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "reference_docs.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_readme_tables_have_no_paragraph_in_a_cell_and_link_existing_pages():
    readme = (ROOT / "README.md").read_text()
    cells = [cell for line in readme.splitlines() if line.startswith("|") for cell in line.strip("|").split(" | ")]
    assert max(len(cell) for cell in cells) < 300
    for page in ("cli.md", "config.md", "python-api.md", "deploy.md", "limitations.md", "glossary.md"):
        assert "(docs/%s)" % page in readme and (ROOT / "docs" / page).exists(), page


def test_benchmarks_start_with_a_dated_summary_and_name_no_issues():
    import re

    text = (ROOT / "BENCHMARKS.md").read_text()
    assert text.splitlines()[2] == "## Summary" and re.search(r"\| 20\d\d-\d\d-\d\d \|", text.split("\n## ", 2)[1])
    assert not re.search(r"\bissues? \d+|issue:", text, re.IGNORECASE)
