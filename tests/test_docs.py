"""The README and docs/: every relative link points to a file that exists (and to a heading in it, when it
names one), and every page of docs/ is reachable from the README."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but hyphens dropped, spaces to hyphens."""
    out, fence = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def _links(page: Path):
    fence = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence:
            yield from LINK.findall(line)


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in _links(page):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in _links(ROOT / "README.md")}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_every_docs_page_says_what_it_covers():
    for page in PAGES[1:]:
        title, blank, intro = page.read_text().splitlines()[:3]
        assert title.startswith("# ") and blank == "" and intro and not intro.startswith("#"), page


def test_the_readmes_python_example_runs_as_written(sd_bundle, tmp_path, monkeypatch):
    """The README's Python block, verbatim, in a folder holding an `oil-engine` bundle (a tiny one) and an
    `input.mp4`: it writes the stylized video, every frame."""
    import shutil

    from conftest import frames_of, make_video

    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "the README has one Python example"
    shutil.copytree(sd_bundle[1].path, tmp_path / "oil-engine")
    make_video(tmp_path / "input.mp4", frames=5, size=(64, 64))
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert len(frames_of(tmp_path / "stylized.mp4")) == 5
