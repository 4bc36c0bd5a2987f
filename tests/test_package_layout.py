"""The package's dependency rules, read from the import statements of every module: the
daemon (``monitor``), training (``models``) and evaluation (``evaluate``) each keep to their
job, and the contracts they share (model card, scores, payload formats) are leaves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ecgmon"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The ecgmon modules ``path`` imports, at any depth of the file (lazy imports count)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "ecgmon" or name.startswith("ecgmon.")}


MODULES = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_scan_sees_the_imports_it_judges():
    # Guards the rules below against a scan that finds nothing (they would all pass).
    assert "ecgmon.monitor.model_loader" in MODULES["ecgmon.evaluate.models"]
    assert "ecgmon.scores" in MODULES["ecgmon.models.trainer"]
    assert any(_under(n, "ecgmon.evaluate") for n in MODULES["ecgmon.commands.evaluate"])


def test_training_imports_nothing_of_the_daemon_but_its_signal_processing():
    wrong = {
        module: sorted(n for n in names if _under(n, "ecgmon.monitor") and not _under(n, "ecgmon.monitor.dsp"))
        for module, names in MODULES.items() if _under(module, "ecgmon.models")
    }
    assert {m: n for m, n in wrong.items() if n} == {}


def test_evaluation_is_imported_by_the_commands_alone():
    # The HTTP face (``ecgmon serve``) is a front end like the commands: its analyses drive an
    # upload through the record runner, so that they equal a replay, and explain beats with the
    # Grad-CAM code and pictures of ``evaluate model`` (evaluate.gradcam, evaluate.plots).
    wrong = {
        module: sorted(n for n in names if _under(n, "ecgmon.evaluate"))
        for module, names in MODULES.items()
        if not any(_under(module, p) for p in ("ecgmon.evaluate", "ecgmon.commands", "ecgmon.http"))
    }
    assert {m: n for m, n in wrong.items() if n} == {}


def _third_party(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_http_face_is_imported_by_the_commands_alone_and_holds_the_web_libraries():
    # The daemon must not pay FastAPI's import unless --http asks for it.
    assert "ecgmon.http.app" in MODULES["ecgmon.http.server"]  # the scan sees it
    wrong = {m: sorted(n for n in names if _under(n, "ecgmon.http")) for m, names in MODULES.items()
             if not _under(m, "ecgmon.http") and not _under(m, "ecgmon.commands")}
    assert {m: n for m, n in wrong.items() if n} == {}
    web = {"fastapi", "starlette", "uvicorn", "prometheus_client", "multipart"}
    outside = {_module_name(p): sorted(_third_party(p) & web) for p in PACKAGE.rglob("*.py")
               if not _under(_module_name(p), "ecgmon.http")}
    assert {m: n for m, n in outside.items() if n} == {}


def test_the_daemon_imports_neither_training_nor_evaluation():
    wrong = {
        module: sorted(n for n in names if _under(n, "ecgmon.models") or _under(n, "ecgmon.evaluate"))
        for module, names in MODULES.items() if _under(module, "ecgmon.monitor")
    }
    assert {m: n for m, n in wrong.items() if n} == {}


@pytest.mark.parametrize("leaf", ["ecgmon.model_card", "ecgmon.scores", "ecgmon.rates", "ecgmon.curve"])
def test_shared_contracts_are_leaves(leaf: str):
    assert MODULES[leaf] == set()


def test_the_daemon_and_training_hold_no_scoring_code():
    names = {p.stem for d in ("monitor", "models") for p in (PACKAGE / d).glob("*.py")}
    assert not names & {"alarm_evaluation", "alarm_report", "qrs_evaluation", "qrs_scoring", "noise_stress",
                        "record_run", "evaluation", "beat_evaluation", "pcg_evaluate", "pcg_metrics", "metrics",
                        "curves", "plots"}
