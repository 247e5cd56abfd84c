#!/usr/bin/env bash
# The prepared check for a lent CUDA machine (bench/gpu_check.py has the details):
#
#     bash bench/gpu_check.sh [OUTDIR] [--tiny] [--deadline 450] [--steps suite runtime packing]   (OUTDIR first)
#
# OUTDIR defaults to $OUT if set, else bench/gpu_check_out/; it receives gpu_check.json and gpu_check.md (paste
# the latter into bench/RESULTS.md). PYTHON picks the interpreter (default python3). Without CUDA it refuses
# (exit 2) unless --allow-cpu, which runs every step on the CPU at tiny sizes.
set -euo pipefail

PY="${PYTHON:-python3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v "$PY" >/dev/null 2>&1; then
    echo "gpu_check: no Python interpreter '$PY' (set PYTHON=/path/to/python)" >&2
    exit 2
fi

allow_cpu=0
for arg in "$@"; do
    if [[ "$arg" == "--allow-cpu" ]]; then
        allow_cpu=1
    fi
done

if ! probe="$("$PY" -c 'import torch; print("yes" if torch.cuda.is_available() else "no", torch.__version__, torch.version.cuda or "none")' 2>&1)"; then
    echo "gpu_check: '$PY' cannot import torch:" >&2
    echo "$probe" | tail -n 5 >&2
    exit 2
fi
read -r cuda torch_version cuda_build <<<"$(echo "$probe" | tail -n 1)"
if [[ "$cuda" != "yes" && "$allow_cpu" == 0 ]]; then
    echo "gpu_check: torch.cuda.is_available() is false (torch $torch_version, CUDA build $cuda_build, python $PY):" \
         "this check is for a CUDA machine. Pass --allow-cpu to run every step on the CPU at tiny sizes." >&2
    exit 2
fi

export GPU_CHECK_ENTRY="bash bench/gpu_check.sh"
exec "$PY" "$HERE/gpu_check.py" "$@"
