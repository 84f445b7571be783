#!/usr/bin/env bash
# Run the test suite RUNS times back to back while one CPU hog per core keeps the machine busy.
#
#   tests/stress_suite.sh [RUNS] [pytest arguments...]      (RUNS defaults to 5)
#
# Every run must pass: the tests assert behaviour, never timing. Prints pass/FAIL and the
# duration of each run; each run's full output is in $LOGDIR/run-N.log. Exits 1 if any run failed.
# PYTHON (default .venv/bin/python) and HOGS (default: the number of cores) can be overridden.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${1:-5}
shift $(( $# > 0 ? 1 : 0 ))
python=${PYTHON:-.venv/bin/python}
logdir=${LOGDIR:-$(mktemp -d -t personae-stress.XXXXXX)}
mkdir -p "$logdir"

hogs=()
for _ in $(seq "${HOGS:-$(nproc)}"); do
    python3 -c 'while True: pass' &
    hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
echo "${#hogs[@]} CPU hogs running (pids ${hogs[*]}); logs in $logdir"

failed=0
for i in $(seq "$runs"); do
    started=$(date +%s)
    if "$python" -m pytest -q -p no:cacheprovider "$@" >"$logdir/run-$i.log" 2>&1; then
        status=pass
    else
        status=FAIL
        failed=$((failed + 1))
    fi
    echo "run $i/$runs: $status in $(( $(date +%s) - started ))s: $(tail -n 1 "$logdir/run-$i.log")"
done
echo "$((runs - failed))/$runs runs passed under ${#hogs[@]} CPU hogs"
exit $(( failed > 0 ))
