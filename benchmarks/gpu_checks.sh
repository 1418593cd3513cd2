#!/usr/bin/env bash
# Issue 18's GPU checks as one prepared script, for a lent `device` machine (one H200 here).
#
#   bash benchmarks/gpu_checks.sh prepare [DATA_ROOT]   # here, once: writes .gpu/ (ignored)
#   # then through the device tool, in one call:
#   #   run(command="bash benchmarks/gpu_checks.sh run", carry=[".gpu"], timeout_s=560)
#   # the printed figures come back under $OUT; put them in the README.
#
# Why a subset: the device takes at most 64 MiB of working tree, and CIFAR-10 is 162 MB, so
# `prepare` writes a stratified 15000-image training subset and the 1000 bit-exact test images
# (the offline copy's other test rows are JPEG-decoded).  On it the checks measure the fast
# protocol's throughput and time per cell against the bare forward+backward, and torch.compile's
# gain; the 93% goal needs the full training set and stays unmeasured until data can travel.
# The device's image has PyTorch (2.11 when last seen) but not kornia or torchattacks:
# `prepare` downloads their wheels for its Python 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    data_root="${2:-../shared/data/cifar10}"
    mkdir -p .gpu/cifar10 .gpu/wheels
    python3 - "$data_root" <<'PY'
import sys
import numpy as np

source = np.load(f"{sys.argv[1]}/cifar10.npz")
y = source["y_train"]
keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:1500] for c in range(10)]))
exact = np.flatnonzero(source["x_test_exact"])[:1000]
np.savez_compressed(
    ".gpu/cifar10/cifar10.npz",
    x_train=source["x_train"][keep], y_train=y[keep],
    x_test=source["x_test"][exact], y_test=source["y_test"][exact],
    x_test_exact=np.ones(len(exact), dtype=bool),
)
print(f".gpu/cifar10/cifar10.npz: {len(keep)} training, {len(exact)} test images")
PY
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .gpu/wheels \
        kornia==0.9.0 kornia_rs==0.2.0 torchattacks==3.5.1
    du -sh .gpu
    ;;
run)
    out="${OUT:-/tmp/gpu-checks}"
    mkdir -p "$out"
    export PYTHONUNBUFFERED=1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/wheels/*.whl
    export PYTHONPATH=/tmp/site
    # Entry points register the built-in plugins: install uebench itself, offline.
    python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        python3 -c "import torch; print('torch', torch.__version__)"
        python3 -m pytest -q -m gpu tests/ || true
        python3 benchmarks/batch_augment.py --device cuda --rounds 3
        python3 benchmarks/fast_cell.py --data-root .gpu/cifar10 --compile
        timeout 150 python3 benchmarks/peer_loop.py --data-root .gpu/cifar10 --arch resnet18 \
            --train-size 15000 --epochs 2 --amp || echo "peer loop: stopped at 150 s"
        timeout 300 python3 benchmarks/field_table.py --data-root .gpu/cifar10 --protocol fast \
            --workers 1 --out /tmp/field-table-fast || echo "field table: stopped at 300 s"
    } 2>&1 | tee "$out/gpu_checks.txt"
    ;;
*)
    echo "usage: bash benchmarks/gpu_checks.sh prepare [DATA_ROOT] | run" >&2
    exit 2
    ;;
esac
