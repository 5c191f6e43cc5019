#!/usr/bin/env bash
# The mask-guided attention ablation (docs/attention.md): one (variant, seed) run at a time, each
# finished run's metrics copied into docs/results/ and committed, so a stop loses at most the run in
# flight; rerunning the same command resumes (finished pairs are skipped, a run in flight resumes
# from its last.pt).
#   usage: benchmarks/run_ablation_guided.sh VERSION SEEDS VARIANTS [KEY=VALUE ...]
#   e.g.   benchmarks/run_ablation_guided.sh 1 "0 2" "hard full full_guided" train.epochs=12
set -euo pipefail
version=$1; seeds=$2; variants=$3; shift 3
root=${HAREID_SYNTHETIC:-$HOME/.cache/hareid}/synthetic-v$version
out=runs/ablation_guided_v$version
repo=${ABLATION_REPO:-.}  # where the results file is written and committed (a checkout of main)
results=$repo/docs/results/ablation_guided_v$version.jsonl
hareid synthetic "$root" --version "$version" --quiet
for seed in $seeds; do
  for variant in $variants; do
    hareid ablate --output "$out" --data-root "$root" --seeds "$seed" --variants "$variant" \
      --curve-every 3 data.workers=1 "$@"
    mkdir -p "$(dirname "$results")"
    # several drivers may share one output folder (disjoint seeds): merge their rows, one per pair
    python - "$out/results.jsonl" "$results" <<'PY'
import json, sys
rows = {}
for path in sys.argv[1:]:
    try:
        for line in open(path):
            if line.strip():
                r = json.loads(line)
                rows[(r["variant"], r["seed"])] = r
    except FileNotFoundError:
        pass
with open(sys.argv[2] + ".tmp", "w") as f:
    for key in sorted(rows, key=lambda k: (k[1], k[0])):
        f.write(json.dumps(rows[key]) + "\n")
import os; os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
    if [ "${ABLATION_COMMIT:-0}" = 1 ]; then
      for _ in 1 2 3 4 5; do
        git -C "$repo" add "$results" && \
          git -C "$repo" commit -q -m "ablation v$version: $variant seed $seed finished" -- "$results" && break
        sleep 3
      done
    fi
  done
done
