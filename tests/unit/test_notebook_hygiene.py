"""Notebook hygiene: no outputs committed, one `parameters` cell of commented literals that agrees
with the params files and the typed model, and nothing that breaks headless runs."""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry_mirror.parameters import SETTINGS_KEYS

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PARAMS_FILES = sorted((ROOT / "params").glob("*.yaml"))
NBSTRIPOUT = Path(sys.executable).parent / "nbstripout"


def _nb(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _code_cells(nb: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict[str, Any]) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _parameters_cells(nb: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]


def _parameters(path: Path) -> dict[str, Any]:
    """name -> literal value of every assignment in the parameters cell."""
    [cell] = _parameters_cells(_nb(path))
    out: dict[str, Any] = {}
    for node in ast.parse(_source(cell)).body:
        if isinstance(node, ast.Assign):
            [target] = node.targets
            assert isinstance(target, ast.Name)
            out[target.id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.AnnAssign):
            assert isinstance(node.target, ast.Name) and node.value is not None
            out[node.target.id] = ast.literal_eval(node.value)
    return out


def _runbook_options(path: Path) -> set[str]:
    """The `options={...}` the notebook passes to runbook_parameters(): its own typed parameters."""
    found: list[set[str]] = []
    for cell in _code_cells(_nb(path)):
        for node in ast.walk(ast.parse(_source(cell))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == \
                    "runbook_parameters":
                options = next((k.value for k in node.keywords if k.arg == "options"), None)
                assert isinstance(options, ast.Dict), "pass options as a dict literal"
                found.append({ast.literal_eval(k) for k in options.keys})  # type: ignore[arg-type]
    assert len(found) == 1, f"{path.name}: runbook_parameters() must be called exactly once, found {len(found)}"
    return found[0]


def test_there_are_notebooks_and_params_files() -> None:
    assert NOTEBOOKS and {p.stem for p in PARAMS_FILES} >= {"local", "staging", "production"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_kernel_is_named(path: Path) -> None:
    kernelspec = _nb(path).get("metadata", {}).get("kernelspec", {})
    assert kernelspec.get("name") == "python3" and kernelspec.get("language") == "python", kernelspec


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_outputs_and_no_execution_counts(path: Path) -> None:
    for index, cell in enumerate(_code_cells(_nb(path))):
        assert cell.get("outputs") == [], f"cell {index} has outputs"
        assert cell.get("execution_count") is None, f"cell {index} has an execution_count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_of_commented_literals(path: Path) -> None:
    cells = _parameters_cells(_nb(path))
    assert len(cells) == 1, f"{len(cells)} cells tagged parameters"
    [cell] = cells
    assert cell["cell_type"] == "code"
    source = _source(cell)
    lines = source.splitlines()
    tree = ast.parse(source)
    assert tree.body, "empty parameters cell"
    for node in tree.body:
        assert isinstance(node, (ast.Assign, ast.AnnAssign)), f"line {node.lineno}: only assignments belong here"
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        assert len(targets) == 1 and isinstance(targets[0], ast.Name), f"line {node.lineno}: one plain name"
        assert node.value is not None, f"line {node.lineno}: a parameter needs a default"
        ast.literal_eval(node.value)  # raises on anything but a literal
        # A comment on the line before, on the statement itself, or on the line after.
        first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        nearby = [lines[first - 1] if first > 0 else "", *lines[first:last + 1],
                  lines[last + 1] if last + 1 < len(lines) else ""]
        assert any("#" in line and _is_comment(line) for line in nearby), \
            f"line {node.lineno} ({targets[0].id}) has no comment"


def _is_comment(line: str) -> bool:
    """True when the line holds a real comment, not a '#' inside a string."""
    import io
    import tokenize

    try:
        return any(t.type == tokenize.COMMENT for t in tokenize.generate_tokens(io.StringIO(line).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        # Part of a multi-line statement: fall back to "a # outside quotes".
        return bool(re.search(r"#(?=(?:[^'\"]|'[^']*'|\"[^\"]*\")*$)", line))


FORBIDDEN = [
    (re.compile(r"^\s*[!%]", re.M), "shell or magic command"),
    (re.compile(r"\bget_ipython\s*\("), "IPython magic through get_ipython()"),
    (re.compile(r"\bsys\s*\.\s*exit\s*\("), "sys.exit() (papermill exits 0 on it)"),
    (re.compile(r"(?<![\w.])exit\s*\(|(?<![\w.])quit\s*\("), "exit()/quit()"),
    (re.compile(r"(?<![\w.])input\s*\("), "input() (fails headless)"),
]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_magics_exit_or_input(path: Path) -> None:
    for index, cell in enumerate(_code_cells(_nb(path))):
        source = _source(cell)
        for pattern, what in FORBIDDEN:
            assert not pattern.search(source), f"cell {index}: {what}"
        ast.parse(source)  # plain Python: a magic would not parse


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_answer_comes_first(path: Path) -> None:
    """The validating cell (the first after the parameters) opens the summary box, and a later cell
    concludes it with the verdict; every runbook has a next step of its own."""
    from registry_mirror.runbook_summary import NEXT

    cells = [c for c in _code_cells(_nb(path)) if "parameters" not in c.get("metadata", {}).get("tags", [])]
    assert f'open_summary("{path.name}", settings, options)' in _source(cells[0])
    assert any("summary.conclude(" in _source(c) for c in cells[1:])
    assert path.name in NEXT


@pytest.mark.parametrize(("source", "bad"), [
    ("!pip install x", True), ("%time f()", True), ("  %%bash", True), ("import sys\nsys.exit(1)", True),
    ("name = input('?')", True), ("exit()", True), ("x = 1  # 100% sure", False), ("re.sub('!', '', s)", False),
    ("user_input(3)", False), ("self.exit()", False),
])
def test_forbidden_patterns_control(source: str, bad: bool) -> None:
    assert any(p.search(source) for p, _ in FORBIDDEN) is bad


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_agrees_with_the_model_and_params_local(path: Path) -> None:
    params = _parameters(path)
    options = _runbook_options(path)
    assert set(params) == set(SETTINGS_KEYS) | options
    assert not set(SETTINGS_KEYS) & options, "a runbook option shadows a settings key"
    local = yaml.safe_load((ROOT / "params" / "local.yaml").read_text())
    assert {k: params[k] for k in SETTINGS_KEYS} == local


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_params_file_has_exactly_the_settings_keys(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert set(data) == set(SETTINGS_KEYS)


# nbstripout >= 0.7 also renumbers cell ids ("0", "1", ...) unless told --keep-id; the notebooks keep
# the random ids Jupyter gave them (stable once committed), so outputs and metadata are what is verified.
VERIFY = ["--verify", "--keep-id"]


def _nbstripout() -> str:
    found = str(NBSTRIPOUT) if NBSTRIPOUT.exists() else shutil.which("nbstripout")
    if found is None:
        pytest.skip("nbstripout is not installed")
    return found


@pytest.fixture(scope="module")
def nbstripout_verdict(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, set[str], str]:
    """One `nbstripout --verify` over every notebook plus two controls: a copy with an output (must be
    named) and a clean copy serialised the same way (must not be). Returns the exit code, the files it
    would strip, and its whole output."""
    nbstripout = _nbstripout()
    folder = tmp_path_factory.mktemp("nbstripout")
    nb = _nb(NOTEBOOKS[0])
    cell = _code_cells(nb)[-1]
    cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hello\n"]}]
    cell["execution_count"] = 3
    (folder / "dirty.ipynb").write_text(json.dumps(nb, indent=1))
    (folder / "clean.ipynb").write_text(json.dumps(_nb(NOTEBOOKS[0]), indent=1))
    result = subprocess.run([nbstripout, *VERIFY, *map(str, NOTEBOOKS), str(folder / "clean.ipynb"),
                             str(folder / "dirty.ipynb")], capture_output=True, text=True, timeout=120)
    marker = "would have stripped "
    named = {line.split(marker, 1)[1].strip() for line in result.stdout.splitlines() if marker in line}
    return result.returncode, named, result.stdout + result.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbstripout_verify(nbstripout_verdict: tuple[int, set[str], str], path: Path) -> None:
    _, named, output = nbstripout_verdict
    assert str(path) not in named, output


def test_nbstripout_verify_control(nbstripout_verdict: tuple[int, set[str], str]) -> None:
    """The check above can fail: the same run names the notebook with an output, and only that one
    (so the clean copy passes and the exit code is the control's)."""
    code, named, output = nbstripout_verdict
    assert code == 1, output
    assert {Path(n).name for n in named} == {"dirty.ipynb"}, output
