#!/bin/bash
# One training step of an older commit against the working tree, interleaved (old new old new ...), each
# side with its own bench/bench_step.py and src/ in one venv. Run it on an otherwise idle machine.
#
#   bench/ab_commits.sh REV [PAIRS=4] [CASE=slimepo-slime-bf16] [STEPS=6]
#
# Prints one JSON line per run (bench_step.py's), then each pair's ratio new/old of the median step time.
set -euo pipefail
rev=${1:?usage: bench/ab_commits.sh REV [PAIRS] [CASE] [STEPS]}
pairs=${2:-4}
case=${3:-slimepo-slime-bf16}
steps=${4:-6}
here=$(git rev-parse --show-toplevel)
python=${PYTHON:-$here/.venv/bin/python}
old=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$old"' EXIT
git -C "$here" worktree add -q --detach "$old" "$rev"
out=$(mktemp)
for i in $(seq "$pairs"); do
  for side in old new; do
    dir=$old; [ "$side" = new ] && dir=$here
    line=$(cd "$dir" && PYTHONPATH="$dir/src" "$python" bench/bench_step.py --case "$case" --model smollm2 \
      --warmup 1 --steps "$steps" 2>/dev/null | tail -1)
    echo "$side $i $line" | tee -a "$out"
  done
done
"$python" - "$out" <<'PY'
import json, statistics, sys
times = {"old": [], "new": []}
for line in open(sys.argv[1]):
    side, _, record = line.split(" ", 2)
    times[side].append(json.loads(record)["median_step_s"])
ratios = [n / o for o, n in zip(times["old"], times["new"])]
print("median step s, old:", [round(t, 2) for t in times["old"]], "new:", [round(t, 2) for t in times["new"]])
print("new/old per pair:", [round(r, 3) for r in ratios], "median", round(statistics.median(ratios), 3))
PY
