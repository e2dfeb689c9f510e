"""Cold start: importing each function's app.py in a fresh interpreter, against importing only
what it cannot do without (Powertools, psycopg, pydantic); and which heavy modules came along.

The function and the layer are copied twice to a temporary directory: once compiled to bytecode
(what the import itself costs: the ratio the target is about; the layer's Makefile ships it so)
and once as bare source (what SAM's python3.12 build method shipped: /opt is read-only on Lambda,
so every cold start compiled the layer again). Dependencies come from the virtualenv, compiled.

The booking function's baseline is the issue's: Powertools + psycopg + pydantic imported. A
second baseline also builds one pydantic model with an ``EmailStr`` field, which every function
validating an email pays (pydantic's model machinery and email_validator load only then): the
ratio to it is what the function's own code costs.
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

BASELINES = {
    "create_booking": (
        "from aws_lambda_powertools import Logger, Metrics\n"
        "from aws_lambda_powertools.event_handler import APIGatewayRestResolver\n"
        "import psycopg, pydantic\n"
    ),
    "rollup_metrics": "from aws_lambda_powertools import Logger, Metrics\nimport psycopg, pydantic\n",
    "check_alerts": "from aws_lambda_powertools import Logger, Metrics\nimport psycopg, pydantic\n",
}

# Baseline + one model with an EmailStr field (the contract's guest email).
MODEL_BASELINE = BASELINES["create_booking"] + (
    "from pydantic import BaseModel, EmailStr\nclass Guest(BaseModel):\n    email: EmailStr\n"
)

PROBE = """
import sys, time, json
t = time.perf_counter()
{body}
took = time.perf_counter() - t
print(json.dumps({{"s": took, "boto3": "boto3" in sys.modules, "botocore_client": "botocore.client" in sys.modules}}))
"""


def _copy(target: Path, compiled: bool) -> Path:
    shutil.copytree(ROOT / "layers" / "capacity" / "capacity", target / "layer" / "capacity",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for function in BASELINES:
        (target / "functions" / function).mkdir(parents=True)
        shutil.copy(ROOT / "functions" / function / "app.py", target / "functions" / function / "app.py")
    if compiled:
        compileall.compile_dir(str(target), quiet=1)
    return target


def fresh_interpreter(layer: Path, function_dir: Path, code: str) -> Any:
    """Run ``code`` in a fresh interpreter as the function's Lambda init would see it (the layer
    and the function's directory on the path, a database URL it never connects to, no bytecode
    written) and return the JSON its last line printed. The tests of what a cold start builds use
    it too."""
    env = {
        **os.environ,
        "PYTHONDONTWRITEBYTECODE": "1",  # a source copy stays source
        "PYTHONPATH": os.pathsep.join([str(layer), str(function_dir)]),
        "DATABASE_URL": "postgresql://bench@127.0.0.1:9/bench",  # never connected at import
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_METRICS_NAMESPACE": "Bench",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    env.pop("ALERT_TOPIC_ARN", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(function_dir),
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _once(root: Path, function: str, body: str) -> dict[str, Any]:
    result: dict[str, Any] = fresh_interpreter(root / "layer", root / "functions" / function, PROBE.format(body=body))
    return result


def benchmark(runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="capacity-coldstart-") as tmp:
        compiled, source = _copy(Path(tmp) / "compiled", True), _copy(Path(tmp) / "source", False)
        for function, baseline in BASELINES.items():
            app, app_source, base, models = [], [], [], []
            probe: dict[str, Any] = {}
            for _ in range(runs):  # alternating, so a busy moment costs each side alike
                probe = _once(compiled, function, "import app")
                app.append(probe["s"])
                app_source.append(_once(source, function, "import app")["s"])
                base.append(_once(compiled, function, baseline)["s"])
                if function == "create_booking":
                    models.append(_once(compiled, function, MODEL_BASELINE)["s"])
            app_ms, base_ms = statistics.median(app) * 1000, statistics.median(base) * 1000
            source_ms = statistics.median(app_source) * 1000
            out[function] = {
                "import_app_ms": round(app_ms, 1),
                "import_baseline_ms": round(base_ms, 1),
                "ratio": round(app_ms / base_ms, 3),
                "import_app_from_source_ms": round(source_ms, 1),
                "ratio_from_source": round(source_ms / base_ms, 3),
                "boto3_imported": probe["boto3"],
                # Powertools imports the bare botocore package for its user agent; the client is the cost
                "botocore_client_imported": probe["botocore_client"],
                "runs": runs,
            }
            if models:
                models_ms = statistics.median(models) * 1000
                out[function]["import_model_baseline_ms"] = round(models_ms, 1)
                out[function]["ratio_to_model_baseline"] = round(app_ms / models_ms, 3)
    return out
