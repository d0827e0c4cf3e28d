#!/usr/bin/env bash
# bench-ab.sh: two builds of `roster serve`, A (before a change) and B
# (after), on the same rows, in alternating turns, so that a machine that
# drifts during the run drifts for both. Prints, per row, the median of
# each side over the rounds and B/A.
#
# Usage: scripts/bench-ab.sh --a COMMIT_OR_BINARY [--b COMMIT_OR_BINARY]
#                            [--rounds N] [--quick] [--out DIR]
#
# A side given as a commit is built in a git worktree under target/ab/
# (release profile, its own target directory, kept for the next run); as a
# path, the binary is used as it is. B defaults to this tree's release
# build. Every turn starts a fresh data directory and runs, as
# bench-vs-etcd.sh does: put with 1 client, put with 100 clients on 10
# connections, serializable range with 100 clients over 10k loaded keys,
# and watch delivery (1000 watchers, events per second delivered). The
# load generator is B's `roster bench` for both sides.
#
# Results go to bench/runs/DATE-ab/ (raw.jsonl, table.md, machine.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

a=""
b=""
rounds=3
quick=0
out=""
USAGE="$0 --a COMMIT_OR_BINARY [--b COMMIT_OR_BINARY] [--rounds N] [--quick] [--out DIR]"
declare -A FLAGS=([--a]=a [--b]=b [--rounds]=rounds [--quick]=quick=1 [--out]=out)
parse_args "$@"
[ -n "$a" ] || usage_error

if ((quick)); then dur=2s; watch_puts=200; else dur=10s; watch_puts=1000; fi
keys=10000

# binary_of SPEC: a path to a roster binary for SPEC, a binary path or a
# commit (built in its own worktree and target directory).
binary_of() {
  local spec=$1
  if [ -x "$spec" ]; then
    echo "$(cd "$(dirname "$spec")" && pwd)/$(basename "$spec")"
    return
  fi
  local commit tree
  commit=$(git rev-parse --short "$spec^{commit}")
  tree="$PWD/target/ab/$commit"
  if [ ! -x "$tree/target/release/roster" ]; then
    [ -d "$tree" ] || git worktree add --detach -q "$tree" "$commit"
    log "building $commit in $tree"
    (cd "$tree" && CARGO_TARGET_DIR="$tree/target" cargo build --release -q -p roster)
  fi
  echo "$tree/target/release/roster"
}

roster_binary
bin_b=${b:+$(binary_of "$b")}
bin_b=${bin_b:-$roster}
bin_a=$(binary_of "$a")
bench="$bin_b"

out="${out:-$(new_run_dir ab)}"
mkdir -p "$out"
raw="$out/raw.jsonl"
: >"$raw"
make_work ab
read -r client_port <<<"$(free_ports 1)"
ep="127.0.0.1:$client_port"

{
  machine_header
  echo "a: $a ($bin_a)"
  echo "b: ${b:-this tree} ($bin_b)"
  echo "rounds: $rounds$([ "$quick" = 1 ] && echo ', quick')"
  echo "load before: $(uptime)"
} | tee "$out/machine.txt"

# run ROUND SIDE ROW ARGS...: one `roster bench` run, recorded.
run() {
  local round="$1" side="$2" row="$3"; shift 3
  log "round $round $side: $row"
  local json
  json="$("$bench" bench "$@" --json)" || json='{"count":0,"errors":1,"rps":0,"latency_ms":{}}'
  printf '{"round":%s,"side":"%s","row":"%s","report":%s}\n' \
    "$round" "$side" "$row" "$json" >>"$raw"
}

turn() {
  local round="$1" side="$2"
  roster=$([ "$side" = a ] && echo "$bin_a" || echo "$bin_b")
  start_server roster "$work/$side-$round" "$work/$side.log"
  wait_ready 60s
  run "$round" "$side" put-1 put --endpoints "$ep" --conns 1 --clients 1 --duration "$dur"
  run "$round" "$side" put-100 put --endpoints "$ep" --conns 10 --clients 100 --duration "$dur"
  "$bench" bench range --endpoints "$ep" --conns 10 --clients 10 \
    --load-keys "$keys" --total 1 --json >/dev/null
  run "$round" "$side" range-s-100 range --endpoints "$ep" --conns 10 --clients 100 \
    --key-space "$keys" --consistency s --duration "$dur"
  run "$round" "$side" watch-1000 watch --endpoints "$ep" --conns 10 --streams 100 \
    --watchers 1000 --clients 10 --total "$watch_puts"
  stop_server
}

for ((r = 1; r <= rounds; r++)); do
  # Alternate who goes first, so neither side always runs on a warm disk.
  if ((r % 2)); then turn "$r" a; turn "$r" b; else turn "$r" b; turn "$r" a; fi
done
echo "load after: $(uptime)" | tee -a "$out/machine.txt"

python3 - "$raw" <<'PY' | tee "$out/table.md"
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rep = r["report"]
    # watch reports events delivered per second; the others requests.
    rate = rep.get("events_per_sec") or rep.get("rps") or 0
    p99 = rep.get("latency_ms", {}).get("p99")
    rows.setdefault(r["row"], {}).setdefault(r["side"], []).append((rate, p99))
print("| row | A median rate | B median rate | B/A | A p99 ms | B p99 ms | rounds A / B |")
print("|---|---|---|---|---|---|---|")
for row, sides in rows.items():
    a = [x[0] for x in sides.get("a", [])]
    b = [x[0] for x in sides.get("b", [])]
    ma = statistics.median(a) if a else 0
    mb = statistics.median(b) if b else 0
    pa = [x[1] for x in sides.get("a", []) if x[1] is not None]
    pb = [x[1] for x in sides.get("b", []) if x[1] is not None]
    fmt = lambda v: f"{v:.2f}" if v else "-"
    ratio = f"{mb / ma:.2f}" if ma else "-"
    print(f"| {row} | {ma:.0f} | {mb:.0f} | {ratio} | {fmt(statistics.median(pa) if pa else 0)} "
          f"| {fmt(statistics.median(pb) if pb else 0)} | {', '.join(f'{x:.0f}' for x in a)} / "
          f"{', '.join(f'{x:.0f}' for x in b)} |")
PY
