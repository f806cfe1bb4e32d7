#!/usr/bin/env bash
# Install depthlab (editable) with its test extra into the current Python environment.
# When no torch is installed and this machine offers a local torch wheel (pip's find-links, e.g. a
# CPU build), install that first so pip does not pull several GB of CUDA packages; everywhere else
# torch comes from the normal index, and an existing torch install is kept as it is.
set -euo pipefail
PY="${PYTHON:-python3}"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.."
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    tmp="$(mktemp -d)"
    if "$PY" -m pip download -q --no-index --no-deps -d "$tmp" "torch==2.13.0" >/dev/null 2>&1; then
        echo "install: torch 2.13.0 from the local wheel"
        "$PY" -m pip install -q "torch==2.13.0"
    else
        echo "install: no local torch wheel; torch comes from the package index"
    fi
    rm -rf "$tmp"
fi
"$PY" -m pip install -q -e ".[test]"
"$PY" -c "import depthlab, torch; print(f'install: depthlab {depthlab.__version__}, torch {torch.__version__}')"
