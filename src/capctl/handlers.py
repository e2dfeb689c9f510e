"""Load a function's handler module from functions/<name>/app.py, the way Lambda and
`sam local invoke` do: by file, each under its own module name (no sys.path changes)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

FUNCTIONS = ("create_booking", "rollup_metrics", "check_alerts")


def functions_dir() -> Path:
    configured = os.environ.get("CAPCTL_FUNCTIONS_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "functions"


def load_handler(name: str, *, fresh: bool = False, instance: str | None = None) -> ModuleType:
    """Import functions/<name>/app.py as module ``functions_<name>``; ``fresh`` re-imports it
    (a new cold start, e.g. after changing the environment). ``instance`` loads an independent
    copy with its own module state, as a second Lambda execution environment would have."""
    module_name = f"functions_{name}" + (f"_{instance}" if instance else "")
    if not fresh and module_name in sys.modules:
        return sys.modules[module_name]
    path = functions_dir() / name / "app.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module
