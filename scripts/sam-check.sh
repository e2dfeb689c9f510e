#!/usr/bin/env bash
# Check the SAM stack offline: `sam validate --lint` (cfn-lint; must be clean), then `sam build`
# for python3.12/arm64 into a temporary directory that is removed afterwards.
#
# Uses the SAM CLI of .venv-sam (make it with:
#   python3 -m venv .venv-sam && .venv-sam/bin/pip install -r requirements-sam.txt).
# `sam build` needs a python3.12 on PATH (the Lambda runtime's version); without one the build is
# skipped with a message and the script still succeeds. No AWS credentials and no Docker needed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAM="${SAM_CLI:-$ROOT/.venv-sam/bin/sam}"
REGION="${AWS_REGION:-eu-west-1}"

export SAM_CLI_TELEMETRY=0
# The template is checked as it is; no call to AWS is wanted (or possible offline).
export AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION" AWS_EC2_METADATA_DISABLED=true

if [[ ! -x "$SAM" ]]; then
    echo "sam-check: no SAM CLI at $SAM; create it with:" >&2
    echo "  python3 -m venv .venv-sam && .venv-sam/bin/pip install -r requirements-sam.txt" >&2
    exit 1
fi

cd "$ROOT"
started=$SECONDS

echo "sam-check: sam validate --lint"
"$SAM" validate --lint --template-file template.yaml --region "$REGION"

# pyenv keeps python3.12 behind a shim that only answers when 3.12 is a selected version.
if command -v pyenv >/dev/null 2>&1 && [[ -z "${PYENV_VERSION:-}" ]]; then
    versions="$(pyenv versions --bare 2>/dev/null | tr '\n' ' ')"
    p312="$(tr ' ' '\n' <<<"$versions" | grep -E '^3\.12(\.|$)' | tail -n 1 || true)"
    if [[ -n "$p312" ]]; then
        current="$(pyenv version-name 2>/dev/null || true)"
        export PYENV_VERSION="${current:+$current:}$p312"
    fi
fi
if ! python3.12 -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
    echo "sam-check: python3.12 not found on PATH; skipping sam build (validate passed)"
    exit 0
fi

build_root="$(mktemp -d "${TMPDIR:-/tmp}/sam-check.XXXXXX")"
trap 'rm -rf "$build_root"' EXIT

echo "sam-check: sam build (python3.12, arm64) into $build_root"
"$SAM" build --template-file template.yaml --build-dir "$build_root/build" \
    --cache-dir "$build_root/cache" >"$build_root/build.log" 2>&1 || {
    cat "$build_root/build.log" >&2
    echo "sam-check: sam build failed" >&2
    exit 1
}

# The layer must hold Linux aarch64 binaries for every compiled dependency, not the host's.
layer="$build_root/build/CapacityLayer/python"
[[ -d "$layer/capacity" ]] || { echo "sam-check: the layer has no python/capacity package" >&2; exit 1; }
for fn in CreateBookingFunction RollupMetricsFunction CheckAlertsFunction; do
    [[ -f "$build_root/build/$fn/app.py" ]] || { echo "sam-check: $fn has no app.py in its build" >&2; exit 1; }
done
mapfile -t libs < <(find "$layer" -name '*.so' -o -name '*.so.*')
if [[ ${#libs[@]} -eq 0 ]]; then
    echo "sam-check: no compiled libraries in the layer (expected psycopg-binary, pydantic-core)" >&2
    exit 1
fi
bad=0
for lib in "${libs[@]}"; do
    case "$lib" in
        *x86_64* | *amd64* | *darwin* | *win_*) echo "sam-check: not an aarch64 build: $lib" >&2; bad=1 ;;
    esac
    if command -v file >/dev/null 2>&1 && ! file -b "$lib" | grep -q 'aarch64'; then
        echo "sam-check: not an aarch64 ELF: $lib" >&2
        bad=1
    fi
done
[[ $bad -eq 0 ]] || exit 1

# Every module of the layer precompiled for the runtime, used whatever times the zip gives the
# sources (hash-based, unchecked): /opt is read-only, a missing .pyc is compiled at every cold start.
stale="$(python3.12 - "$layer" <<'PY'
import importlib.util, pathlib, sys
root = pathlib.Path(sys.argv[1])
bad = []
for source in root.rglob("*.py"):
    pyc = pathlib.Path(importlib.util.cache_from_source(str(source)))
    if not pyc.is_file() or int.from_bytes(pyc.read_bytes()[4:8], "little") != 0b01:
        bad.append(str(source.relative_to(root)))
print(f"{len(bad)} modules not precompiled, e.g. {bad[0]}" if bad else "")
PY
)"
[[ -z "$stale" ]] || { echo "sam-check: $stale" >&2; exit 1; }

size="$(du -sm "$layer" | cut -f1)"
echo "sam-check: ok (layer ${size} MB unzipped, precompiled, ${#libs[@]} aarch64 libraries; $((SECONDS - started)) s)"
