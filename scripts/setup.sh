#!/usr/bin/env bash
# Set up largebatch in ./.venv: PyTorch 2.13.0 (through constraints.txt: the CPU build on our
# machines, whatever the package index gives elsewhere), the package in editable mode and, with
# --test, the test tools. With --keep-torch, the venv sees the system's packages and the torch
# already installed there is kept (no constraint). With --data, also install Fashion-MNIST
# through apt-get (Debian package dataset-fashion-mnist) when it is missing and apt-get exists.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
want_data=0
keep_torch=0
for arg in "$@"; do
  case "$arg" in
    --test) extras="[test]" ;;
    --data) want_data=1 ;;
    --keep-torch) keep_torch=1 ;;
    *) echo "setup.sh: unknown option $arg (use --test, --data and/or --keep-torch)" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if [ "$keep_torch" = 1 ]; then
    "$python" -m venv --system-site-packages .venv
  else
    "$python" -m venv .venv
  fi
fi
if [ "$keep_torch" = 1 ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
else
  # constraints.txt pins torch==2.13.0: the CPU build our machines carry on disk.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".${extras}"
fi

if [ "$want_data" = 1 ] && [ -z "${LARGEBATCH_DATA:-}" ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    echo "setup.sh: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup.sh: Fashion-MNIST is missing and apt-get is not available: put the four IDX files" \
         "in a folder and pass it with --data-dir (or set LARGEBATCH_DATA)" >&2
  fi
fi
