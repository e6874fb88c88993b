#!/usr/bin/env bash
# CI, after the README's commands: the floor environment. A second virtual environment holds every dependency at
# pyproject.toml's floor (pip's --constraint .ci/floor-constraints.txt) and the README's torch, and runs what a
# user of an older Ray (a cluster's) runs: the smoke study end to end, then a study killed midway and resumed.
# Usage: .ci/floor.sh [VENV]   (default /tmp/cifar100-hpo-floor-venv, made afresh; results in a temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-/tmp/cifar100-hpo-floor-venv}
constraints=.ci/floor-constraints.txt
out=$(mktemp -d)
driver=

kill_session() {  # SIGKILL to every process of the session $1: a driver started with setsid and the Ray it started
    pkill -KILL -s "$1" || true
    wait "$1" 2>/dev/null || true
    for _ in $(seq 100); do
        pgrep -s "$1" >/dev/null || return 0
        sleep 0.2
    done
}

clean_up() {  # a driver of ours still running (this script stopped early); the results
    [ -z "$driver" ] || kill_session "$driver"
    rm -rf "$out"
}
trap clean_up EXIT

fail() {
    echo "floor: $*" >&2
    exit 1
}

rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --constraint "$constraints" torch==2.14.1 torchvision==0.29.1
"$venv/bin/pip" install -q --constraint "$constraints" -e .
# Every pin holds (the constraint file names the floors; pip must not have found a way around one).
"$venv/bin/python" - "$constraints" <<'EOF'
import importlib.metadata, sys

pins = [line.split("==") for line in open(sys.argv[1]).read().splitlines() if line and not line.startswith("#")]
wrong = [f"{name} {importlib.metadata.version(name)} (pinned {pin})" for name, pin in pins
         if importlib.metadata.version(name) != pin]
assert not wrong, f"not at the floor: {', '.join(wrong)}"
print("floor:", ", ".join(f"{name} {pin}" for name, pin in pins), f"torch {importlib.metadata.version('torch')}")
EOF

# 1. The smoke study, end to end.
"$venv/bin/python" -m search.run --study smoke --results-dir "$out/whole" | tee "$out/whole.log"
tail -n 1 "$out/whole.log" | grep -q '^final: ' || fail "the smoke study did not end with its final line"
! grep -q '^report: not written' "$out/whole.log" || fail "the smoke study's report was not written"

# 2. The smoke study killed midway (SIGKILL to the driver and the Ray it started, a session of their own, as to a
# lost machine's), once a trial has ended and others run, then resumed to its end.
setsid "$venv/bin/python" -m search.run --study smoke --results-dir "$out/killed" >"$out/killed.log" 2>&1 &
driver=$!
for _ in $(seq 600); do
    grep -qE ' trial [0-9]+ (complete|pruned): ' "$out/killed.log" && break
    kill -0 "$driver" 2>/dev/null || fail "the study ended before it was killed: $(tail -n 3 "$out/killed.log")"
    sleep 0.5
done
grep -qE ' trial [0-9]+ (complete|pruned): ' "$out/killed.log" || fail "no trial ended in 300 s"
kill_session "$driver"
driver=
echo "floor: killed midway: $(grep -cE ' trial [0-9]+ (complete|pruned): ' "$out/killed.log") trial(s) had ended"
"$venv/bin/python" -m search.run --study smoke --results-dir "$out/killed" --resume | tee "$out/resumed.log"
tail -n 1 "$out/resumed.log" | grep -q '^final: ' || fail "the resumed study did not end with its final line"
[ "$(wc -l <"$out/killed/smoke/trials.csv")" -eq "$(wc -l <"$out/whole/smoke/trials.csv")" ] ||
    fail "the resumed study's trials.csv has not the whole study's number of trials"
echo "floor: the smoke study ran end to end and resumed after a SIGKILL"
