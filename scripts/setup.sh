#!/usr/bin/env bash
# Creates .venv and installs Wavecast into it.
#
# torch comes first and on purpose: a plain `pip install torch` (or any loose range with no torch
# installed) pulls a CUDA build of several GB. On a machine without an NVIDIA GPU we install the
# CPU build pinned by WAVECAST_TORCH (default 2.13.0, which this project's CPU machines have as a
# local wheel; elsewhere set WAVECAST_TORCH_INDEX to PyTorch's CPU wheel index). On a GPU machine
# the normal CUDA torch from the registry is used. A torch that is already installed is kept:
# pyproject.toml only asks for torch>=2.4, which it satisfies.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${WAVECAST_TORCH:-2.13.0}
EXTRAS=${WAVECAST_EXTRAS:-dev,sweeps}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing the CUDA build of torch"
    "${PIP[@]}" "torch>=2.4"
  else
    echo "[setup] no GPU: installing the CPU build torch==${TORCH_VERSION}"
    if [ -n "${WAVECAST_TORCH_INDEX:-}" ]; then
      "${PIP[@]}" "torch==${TORCH_VERSION}" --index-url "$WAVECAST_TORCH_INDEX"
    else
      "${PIP[@]}" "torch==${TORCH_VERSION}"
    fi
  fi
fi

# Editable install so that train.py / eval.py / scripts import the packages from this checkout.
"${PIP[@]}" -e ".[${EXTRAS}]"
"$VENV/bin/python" -c "import torch, lightning, hydra; print(f'[setup] torch {torch.__version__}, lightning {lightning.__version__}, hydra {hydra.__version__}')"
