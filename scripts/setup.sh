#!/usr/bin/env bash
# Set up largebatch in ./.venv: PyTorch 2.13.0 (CPU build, through constraints.txt), the package
# in editable mode and, with --test, the test tools. With --data, also install Fashion-MNIST
# through apt-get (Debian package dataset-fashion-mnist) when it is missing and apt-get exists.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
want_data=0
for arg in "$@"; do
  case "$arg" in
    --test) extras="[test]" ;;
    --data) want_data=1 ;;
    *) echo "setup.sh: unknown option $arg (use --test and/or --data)" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# -c constraints.txt pins torch to the CPU build our machines carry; drop it to keep your own torch.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".${extras}"

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
