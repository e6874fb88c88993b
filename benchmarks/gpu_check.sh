#!/usr/bin/env bash
# Where a new GPU machine stands: the bench suite, the seed recipe on the real data (killed and
# resumed), and a miniature study. Usage and what it writes: benchmarks/gpu_check.sh --help
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
