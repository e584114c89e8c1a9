"""The house rules of DESIGN.md and STYLE.md that code can check: what the core imports, and that importing does no
work."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"
#: Orchestration, presentation and the entry points: the only modules allowed to reach Prefect or Jinja.
SHELL = {"flows", "_server", "report", "cli", "__init__", "__main__"}  # and the entry points


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in SHELL))
def test_the_core_never_imports_prefect_jinja_or_the_cli(module):
    imported = imported_modules(PACKAGE / f"{module}.py")
    assert not imported & {"prefect", "prefect_dask", "jinja2"}
    source = (PACKAGE / f"{module}.py").read_text()
    assert "from .cli" not in source and "from .flows" not in source and "from .report" not in source


def fresh_import(statement: str) -> dict:
    """Import in a clean interpreter and say which heavy modules came along and what changed in the environment."""
    code = (f"import os, sys; before = dict(os.environ); {statement}; import json; print(json.dumps({{"
            "'tensorflow': 'tensorflow' in sys.modules, 'prefect': 'prefect' in sys.modules, "
            "'pyplot': 'matplotlib.pyplot' in sys.modules, 'pandas': 'pandas' in sys.modules, "
            "'environ_changed': sorted(k for k in os.environ if before.get(k) != os.environ[k])}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_findings_and_heatmaps_import_without_tensorflow():
    loaded = fresh_import("import pipeline.findings, pipeline.heatmaps, pipeline.spray")
    assert not loaded["tensorflow"] and not loaded["prefect"]


def test_the_foreground_estimate_s_worker_processes_import_it_without_tensorflow_or_pandas():
    loaded = fresh_import("import pipeline.foreground, pipeline._workers")  # what a worker imports (about 70 MB)
    assert not loaded["tensorflow"] and not loaded["pandas"]


def test_importing_the_package_sets_no_environment_and_selects_no_plotting_backend():
    from pipeline.settings import OFFLINE_DEFAULTS

    ours = {*OFFLINE_DEFAULTS, "PREFECT_RESULTS_LOCAL_STORAGE_PATH"}
    loaded = fresh_import("import pipeline.cli, pipeline.report, pipeline.flows")
    assert not set(loaded["environ_changed"]) & ours  # set when main() or audit() runs, not on import
    assert not fresh_import("import pipeline.cli")["tensorflow"]  # `--help` and user errors answer fast
    for path in PACKAGE.glob("*.py"):
        source = path.read_text()
        assert "matplotlib.use(" not in source and "import pyplot" not in source, path.name


def test_the_cam_methods_the_cli_offers_are_those_the_engine_implements():
    from pipeline.cli import build_parser
    from pipeline.config import CAM_METHODS
    from pipeline.gradcam import METHODS

    assert list(METHODS) == list(CAM_METHODS)
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions
               if a.dest == "method")
    assert list(run.choices) == list(CAM_METHODS)
