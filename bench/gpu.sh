#!/usr/bin/env bash
# The GPU checks in one command, for a machine with CUDA and no network (the lent H200 has Python 3.12 with
# torch and torchdiffeq, not the web stack). Prepare here with `make gpu-bundle` (wheels and MNIST in the
# gitignored .device/), carry `.device` along, and run `bash bench/gpu.sh` there: about 9 minutes, each step
# under its own timeout. The tables go to $OUT (the device tool's folder), else runs/gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu}"
mkdir -p "$out"
if compgen -G ".device/wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .device/wheels/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1 LATENT_CNF_DEVICE=cuda LATENT_CNF_DATA="${LATENT_CNF_DATA:-$PWD/.device/data}"
python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device: bench/gpu.sh needs one"
print(torch.__version__, torch.cuda.get_device_name())' 2>&1 | tee "$out/device.txt" || exit 1

echo "== tests on cuda (the model, calibration and the service; Fashion-MNIST is not carried)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cnf.py tests/test_model.py tests/test_calibrate.py \
  tests/test_batching.py tests/test_service_api.py tests/test_service_concurrency.py 2>&1 | tee "$out/tests.txt"
tests_status=$?

echo "== the model alone"
timeout 180 python3 bench/model.py --device cuda --batch-sizes 1,16,256,4096 --score-batch-sizes 1,16,64 \
  --solvers "calibrated,dopri5 1e-5,rk4 32 steps" --min-time 0.5 --markdown --json "$out/model.json" \
  2>&1 | tee "$out/model.md"

echo "== torch.compile of the fixed-step loop (CUDA graphs), against eager"
timeout 120 python3 bench/compile.py --device cuda --batch-sizes 1,256 --min-time 0.5 --markdown 2>&1 \
  | grep -v '^W' | tee "$out/compile.md"

echo "== the service"
timeout 150 python3 bench/service.py --duration 5 --concurrency 1,32 --scenarios healthz,generate-1,generate-64,score \
  --markdown --json "$out/service.json" 2>&1 | tee "$out/service.md"
exit "$tests_status"  # the benchmarks run whatever the tests said; the status is the tests'
