#!/usr/bin/env bash
# Set up scopeloop in ./.venv: the one install step the README, the demo and CI share.
# CPU machines get torch's CPU build (pinned by .ci/constraints-cpu.txt, so nothing pulls
# ~3 GB of CUDA packages); machines with an NVIDIA driver get CUDA torch and faiss-gpu.
# Re-running is quick: nothing is reinstalled unless pyproject.toml or the constraints change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
  echo "scopeloop needs Python 3.10 or newer; found: $("$PY" --version 2>&1 || echo none)." >&2
  echo "Install a newer Python (e.g. 'module load python/3.11' on the cluster) or set PYTHON=/path/to/python3.11." >&2
  exit 1
fi
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt 3000000 ]; then
  echo "Less than 3 GB of free disk here ($(df -Ph . | awk 'NR==2 {print $4}') free): the install needs about 3 GB. Free some space and retry." >&2
  exit 1
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && [ "${SCOPELOOP_CPU:-0}" != "1" ]; then
  extras="gpu,server,dev"; constraints=()
else
  extras="cpu,server,dev"; constraints=(-c .ci/constraints-cpu.txt)
fi

# Browser tests (tests/test_browser.py) drive a system Chromium via Playwright; without one they
# skip. System packages are installed only when asked: SCOPELOOP_INSTALL_BROWSER=1 (CI sets it).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
   && ! command -v google-chrome >/dev/null 2>&1; then
  if [ "${SCOPELOOP_INSTALL_BROWSER:-0}" = "1" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing chromium for the browser tests (apt-get, asked by SCOPELOOP_INSTALL_BROWSER=1)..."
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
        || { echo "error: 'apt-get install chromium' failed; install Chromium yourself" >&2; exit 1; }
    else
      echo "error: SCOPELOOP_INSTALL_BROWSER=1 needs root and apt-get; install Chromium yourself (Debian: sudo apt-get install -y chromium)" >&2
      exit 1
    fi
  else
    echo "note: no Chromium found: the browser tests will be skipped (install one, e.g. 'sudo apt-get install -y chromium', or rerun with SCOPELOOP_INSTALL_BROWSER=1 as root)" >&2
  fi
fi

stamp=.venv/.scopeloop-install
want=$(cat pyproject.toml .ci/constraints-cpu.txt | sha256sum | cut -c1-16)-$extras
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/scopeloop ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "installing scopeloop [$extras] into .venv (first time: a few minutes)..."
pip_install() { .venv/bin/python -m pip install --disable-pip-version-check -q "${constraints[@]}" "$@" -e ".[$extras]"; }
if ! pip_install 2>.venv/pip-error.log; then
  if [ ${#constraints[@]} -gt 0 ]; then
    # torch's CPU build is not on PyPI: take it from PyTorch's own index
    echo "retrying with the PyTorch CPU wheel index..."
    pip_install --extra-index-url https://download.pytorch.org/whl/cpu 2>.venv/pip-error.log || { tail -20 .venv/pip-error.log >&2; exit 1; }
  else
    tail -20 .venv/pip-error.log >&2; exit 1
  fi
fi
echo "$want" > "$stamp"
echo "scopeloop installed: $(.venv/bin/scopeloop --version 2>/dev/null || echo ok)"
