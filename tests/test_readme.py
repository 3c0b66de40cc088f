"""Every command in the README's code blocks (and in docs/*.md, where sections move), run as
written: bash blocks as one script each, the Python blocks of a section as one program, in
the order a reader meets them, from a stand-in for the repository root.

The stand-in root is a temporary folder with links to the checkout's `.venv`, `configs`,
`benchmarks`, `Makefile` and `pyproject.toml`, so relative paths (`out/ds1-demo.zarr`,
`.venv/bin/mlds`) resolve as at the root while the user's own `out/` is left alone; `.venv/bin`
leads PATH, as for a reader with the environment activated (the README's bare `mlds` and
`python`). Background jobs (`&`) are waited for. Later blocks read what earlier ones made
(the demo's store, the analysis stores): run the whole file, not one block of it.

A block may be shrunk or skipped by an HTML comment on the line(s) right before its fence:

    <!-- readme-test: "--per-task 100" -> "--per-task 2"; drop "make test" (why) -->
    <!-- readme-test: skip (why) -->

`"OLD" -> "NEW" (why)` replaces text (every occurrence; the reason is optional);
`drop "PREFIX" (why)` removes the lines that start with PREFIX (with their `\\`
continuation lines); `skip (why)` skips the block.
A marker without a reason, or one this file cannot read, fails the test of its block.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINKED = (".venv", "configs", "benchmarks", "Makefile", "pyproject.toml")
RUN = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARKER = re.compile(r"<!--\s*readme-test:(.*?)-->", re.S)
DIRECTIVE = re.compile(r'\s*(?:skip\s*\((?P<skip>[^)]+)\)'
                       r'|"(?P<old>[^"]+)"\s*->\s*"(?P<new>[^"]*)"(?:\s*\([^)]+\))?'
                       r'|drop\s*"(?P<drop>[^"]+)"\s*\((?P<why>[^)]+)\))\s*(?:;|$)')


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    section: str
    text: str
    marker: str | None
    skip: str = ""
    edits: list = field(default_factory=list)  # (old, new)
    drops: list = field(default_factory=list)  # prefixes

    @property
    def name(self) -> str:
        return f"{self.doc.name}:{self.line}"

    def parse_marker(self) -> None:
        if self.marker is None:
            return
        rest, pos = self.marker.strip(), 0
        while pos < len(rest):
            m = DIRECTIVE.match(rest, pos)
            if not m or m.end() == pos:
                raise ValueError(f"{self.name}: cannot read the readme-test marker at "
                                 f"{rest[pos:]!r}")
            if m["skip"]:
                self.skip = m["skip"]
            elif m["drop"]:
                self.drops.append(m["drop"])
            else:
                self.edits.append((m["old"], m["new"]))
            pos = m.end()

    def script(self) -> str:
        text = self.text
        for old, new in self.edits:
            if old not in text:
                raise ValueError(f"{self.name}: the marker replaces {old!r}, which the block "
                                 f"does not contain")
            text = text.replace(old, new)
        kept, dropping = [], False
        for line in text.splitlines():
            if not dropping and any(line.lstrip().startswith(p) for p in self.drops):
                dropping = True
            if not dropping:
                kept.append(line)
            dropping = dropping and line.rstrip().endswith("\\")
        return "\n".join(kept) + "\n"


def blocks(doc: Path) -> list[Block]:
    lines = doc.read_text().splitlines()
    found, section, i = [], "", 0
    while i < len(lines):
        if lines[i].startswith("#"):
            section = lines[i].lstrip("#").strip()
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        if m[2] in RUN:
            before = "\n".join(lines[max(0, i - 6):i]).rstrip()
            marks = MARKER.findall(before) if before.endswith("-->") else []
            text = textwrap.dedent("\n".join(lines[i + 1:end]))
            found.append(Block(doc, i + 1, RUN[m[2]], section, text,
                               marks[-1] if marks else None))
        i = end + 1
    return found


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def cases() -> list:
    """One case per bash block; one per section for its Python blocks (they share names)."""
    out, python = [], {}
    for doc in documents():
        for b in blocks(doc):
            if b.lang == "python":
                key = (doc, b.section)
                if key not in python:
                    python[key] = []
                    out.append(python[key])
                python[key].append(b)
            else:
                out.append([b])
    return [pytest.param(group, id=group[0].name) for group in out]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The stand-in repository root, shared by every block in reading order (the Python
    blocks read the store the demo block made)."""
    stamp, project = REPO / ".venv" / ".installed", REPO / "pyproject.toml"
    if not stamp.exists() or stamp.stat().st_mtime < project.stat().st_mtime:
        pytest.fail("the .venv is older than pyproject.toml: run `make setup` first (`make "
                    "demo` would reinstall the package from the stand-in root)")
    root = tmp_path_factory.mktemp("root")
    for name in LINKED:
        (root / name).symlink_to(REPO / name)
    (root / "out").mkdir()
    return root


@pytest.mark.parametrize("group", cases())
def test_readme_block_runs_as_written(group, root):
    for b in group:
        b.parse_marker()
    run = [b for b in group if not b.skip]
    if not run:
        pytest.skip("; ".join(f"{b.name}: {b.skip}" for b in group))
    env = {**os.environ, "PATH": f"{root / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLDS_VERBOSE", None)
    if group[0].lang == "python":
        cmd = [str(root / ".venv" / "bin" / "python"), "-c", "\n".join(b.script() for b in run)]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", "-c", run[0].script() + "wait\n"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    where = ", ".join(b.name for b in run)
    assert proc.returncode == 0, f"{where} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr


def test_every_marker_belongs_to_a_block_and_says_why():
    """A marker that lost its block (an edit moved it) or skips without a reason fails here."""
    for doc in documents():
        attached = sum(b.marker is not None for b in blocks(doc))
        written = sum(line.lstrip().startswith("<!-- readme-test:")
                      for line in doc.read_text().splitlines())
        assert written == attached, f"{doc}: {written - attached} markers before no block"
        for b in blocks(doc):
            b.parse_marker()
            assert not b.skip or len(b.skip.split()) >= 3, f"{b.name}: say why it is skipped"


def test_the_demo_makes_the_store_the_python_blocks_read():
    """The README's first command and the researcher's first program meet in one path."""
    readme = REPO / "README.md"
    assert "out/ds1-demo.zarr" in (REPO / "Makefile").read_text()
    assert any("out/ds1-demo.zarr" in b.text for b in blocks(readme) if b.lang == "python")
