"""Every repo path that prose names exists: comments and docstrings in the code, the README, the
docs pages, dvc.yaml and params.yaml. A renamed module leaves no comment pointing at its old name,
and a docs link always opens."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Folders of the source tree that prose points into. Run outputs (data/, models/, exports/,
# metrics/, deploy/, report/) are made by the stages and are not checked here.
SOURCE_ROOTS = ("pipeline", "flows", "tests", "docs", "examples", "requirements", "bench", ".ci")
_ROOTS = "|".join(re.escape(r) for r in SOURCE_ROOTS)
PATH = re.compile(rf"(?<![\w./-])((?:{_ROOTS})/[\w./-]*[\w/])")
LINK = re.compile(r"\]\(([^)#\s]+)")


def _python_prose(path: Path) -> str:
    """Comments and docstrings of a Python file: the prose, not the code's own strings."""
    text = path.read_text()
    parts = [
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            parts.append(ast.get_docstring(node, clean=False) or "")
    return "\n".join(parts)


def _yaml_comments(path: Path) -> str:
    return "\n".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line)


def _sources() -> dict[Path, str]:
    """Each file whose prose is checked, with that prose."""
    out = {}
    for root in ("pipeline", "flows", "tests"):
        for path in sorted((REPO / root).rglob("*.py")):
            out[path] = _python_prose(path)
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        out[path] = path.read_text()
    for name in ("dvc.yaml", "params.yaml"):
        out[REPO / name] = _yaml_comments(REPO / name)
    return out


def missing_paths(source: Path, prose: str, repo: Path = REPO) -> list[str]:
    """The repo paths named in `prose` that do not exist: source-tree paths relative to the repo,
    markdown links relative to the page. Patterns (`*`, `<device>`, `NAME`) are not paths."""
    wrong = []
    for match in PATH.finditer(prose):
        name = match.group(1).rstrip(".")
        if re.search(r"[*<>{}]|NAME|NNNN|\.\.\.", name):
            continue
        module = re.sub(r"\.[A-Za-z_]\w*$", ".py", name)  # a module attribute names its .py
        if not (repo / name).exists() and not (repo / module).exists():
            wrong.append(name)
    if source.suffix == ".md":
        for target in LINK.findall(prose):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (source.parent / target).exists():
                wrong.append(target)
    return wrong


def test_every_path_named_in_prose_exists() -> None:
    wrong = [
        f"{path.relative_to(REPO)}: {name}"
        for path, prose in _sources().items()
        for name in missing_paths(path, prose)
    ]
    assert not wrong, "paths named but missing:\n" + "\n".join(sorted(set(wrong)))


def test_the_check_finds_a_stale_path(tmp_path: Path) -> None:
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "here.py").write_text("")
    prose = "see pipeline/here.py and pipeline/gone.py, not pipeline/*.py or deploy/<device>/"
    assert missing_paths(tmp_path / "a.py", prose, tmp_path) == ["pipeline/gone.py"]
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    assert missing_paths(page, "[ok](../pipeline/here.py) [gone](other.md)", tmp_path) == [
        "other.md"
    ]
