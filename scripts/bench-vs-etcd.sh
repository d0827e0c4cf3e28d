#!/usr/bin/env bash
# Roster against the real etcd 3.4 on this machine: the same `roster bench`
# scenarios against each, alternately (etcd, roster, etcd, roster, ...) for
# several rounds, then a table of medians with the Roster/etcd ratio per row
# and the machine's ceilings (a no-op gRPC server, fsync latency).
#
#   scripts/bench-vs-etcd.sh [--quick] [--rounds N] [--out DIR] [--no-build]
#
# --quick    short runs and 10k instead of 100k keys: a smoke run of a few
#            minutes. The full run takes about 12 minutes.
# --rounds   rounds of A B (default 3).
# --out      where raw results go (default bench/runs/<UTC date>-vs-etcd);
#            raw.jsonl holds every report, table.md the table, machine.txt
#            the machine and its load.
# --no-build use the existing target/release/roster.
#
# Both servers run on free loopback ports with fresh data directories, one
# at a time, so they never compete with each other; the load generator
# shares the machine with the server it measures, identically for both.
# Each round, each server gets two lives:
#   data: load the keys (txns of 100 puts), read VmRSS, serializable and
#         linearizable range with 1000 clients, then kill -9 and time the
#         restart until a linearizable Range succeeds;
#   ops:  put with 1, 100 and 1000 clients, lease keepalive with 100
#         clients, watch delivery to 1000 watchers, put->event latency at
#         100 puts/s to 100 watchers, registry register and discover.
# Benchmarks are noisy on a shared machine: the load average is printed at
# the start and end, and kept with the results.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

quick=0
rounds=3
out=""
USAGE="$0 [--quick] [--rounds N] [--out DIR] [--no-build]"
# shellcheck disable=SC2034 # read by parse_args
declare -A FLAGS=([--quick]=quick=1 [--rounds]=rounds [--out]=out [--no-build]=build=0)
parse_args "$@"

# put->event is measured at watch_rate puts a second.
watch_rate=100
if ((quick)); then
  dur=2s; keys=10000; watch_puts=100; lat_dur=3s; paced_syncs=100
else
  dur=10s; keys=100000; watch_puts=1000; lat_dur=10s; paced_syncs=500
fi

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ((${#missing[@]})); then
  echo "bench-vs-etcd: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

roster_binary

out="${out:-$(new_run_dir vs-etcd)}"
mkdir -p "$out"
raw="$out/raw.jsonl"
: >"$raw"
make_work bench

# Loopback ports nothing listens on, kept for the whole run (a restart
# finds its server where it was), so a stray etcd on 2379 is never
# measured by mistake.
read -r client_port peer_port <<<"$(free_ports 2)"
ep="127.0.0.1:$client_port"
peer="127.0.0.1:$peer_port"

# record ROUND SERVER ROW JSON [SERVER_CPU_S]: appends one tagged report to
# raw.jsonl.
record() {
  printf '{"round":%s,"server":"%s","row":"%s","server_cpu_s":%s,"report":%s}\n' \
    "$1" "$2" "$3" "${5:-null}" "$4" >>"$raw"
}

# run ROUND SERVER ROW ARGS...: one `roster bench` run, recorded. A run
# that fails is recorded with what it printed, and the script goes on.
run() {
  local round="$1" server="$2" row="$3"; shift 3
  log "round $round $server: $row"
  local json c0 c1
  c0=$(cpu_ticks "$pid")
  if json="$("$roster" bench "$@" --json)"; then :; else
    log "  $row failed against $server (recorded with its errors)"
  fi
  c1=$(cpu_ticks "$pid")
  [ -n "$json" ] || json='{"count":0,"errors":1,"rps":0,"latency_ms":{}}'
  record "$round" "$server" "$row" "$json" "$(awk -v a="$c0" -v b="$c1" 'BEGIN {print (b - a) / 100}')"
}

# value ROUND SERVER ROW NUMBER: records a bare measurement (RSS, restart).
value() {
  record "$1" "$2" "$3" "{\"value\":$4}"
}

# start SERVER DIR: starts the server with that data directory.
start() {
  start_server "$1" "$2" "$work/$1.log"
}

data_life() {
  local round="$1" server="$2"
  local dir="$work/$server-data-$round"
  start "$server" "$dir"
  wait_ready 60s
  log "round $round $server: loading $keys keys"
  "$roster" bench range --endpoints "$ep" --conns 10 --clients 10 \
    --load-keys "$keys" --total 1 --json >/dev/null
  sleep 1
  # VmRSS counts file pages the process has mapped (etcd maps its whole
  # database); RssAnon is the process's own memory alone.
  value "$round" "$server" rss_mb "$(rss_kb "$pid" | awk '{printf "%.1f", $1/1024}')"
  value "$round" "$server" rss_anon_mb "$(anon_kb "$pid" | awk '{printf "%.1f", $1/1024}')"
  run "$round" "$server" range-s-1000 range --endpoints "$ep" --conns 100 --clients 1000 \
    --key-space "$keys" --consistency s --duration "$dur"
  run "$round" "$server" range-l-1000 range --endpoints "$ep" --conns 100 --clients 1000 \
    --key-space "$keys" --consistency l --duration "$dur"
  stop_server
  local t0 t1
  t0=$(date +%s%N)
  start "$server" "$dir"
  wait_ready 120s
  t1=$(date +%s%N)
  value "$round" "$server" restart_ms "$(( (t1 - t0) / 1000000 ))"
  stop_server
}

ops_life() {
  local round="$1" server="$2"
  start "$server" "$work/$server-ops-$round"
  wait_ready 60s
  run "$round" "$server" put-1 put --endpoints "$ep" --conns 1 --clients 1 --duration "$dur"
  run "$round" "$server" put-100 put --endpoints "$ep" --conns 10 --clients 100 --duration "$dur"
  run "$round" "$server" put-1000 put --endpoints "$ep" --conns 100 --clients 1000 --duration "$dur"
  run "$round" "$server" keepalive-100 lease-keepalive --endpoints "$ep" --conns 10 --clients 100 \
    --duration "$dur"
  run "$round" "$server" watch-1000 watch --endpoints "$ep" --conns 10 --streams 100 \
    --watchers 1000 --clients 10 --total "$watch_puts"
  run "$round" "$server" watch-latency watch --endpoints "$ep" --conns 10 --streams 10 \
    --watchers 100 --clients 10 --rate "$watch_rate" --duration "$lat_dur"
  run "$round" "$server" register register --endpoints "$ep" --conns 10 --clients 10 \
    --duration "$dur"
  run "$round" "$server" discover discover --endpoints "$ep" --conns 10 --clients 1 \
    --discoverers 100 --duration "$dur"
  stop_server
}

{
  machine_header etcd
  echo "rounds: $rounds$([ "$quick" = 1 ] && echo ', quick')"
  echo "load before: $(uptime)"
} | tee "$out/machine.txt"

# ceilings ROUND: the most a gRPC server here can answer, and the latency
# of one durable small write on the disk the data lives on. Taken before
# and after the rounds, since a shared machine's load drifts.
ceilings() {
  local noop
  : >"$work/noop.log"
  RUST_LOG=warn spawn "$work/noop.log" "$roster" bench noop-server --listen 127.0.0.1:0
  noop=$(wait_addr "$work/noop.log" "$pid" "ready to serve")
  run "$1" ceiling noop-1 noop --endpoints "$noop" --conns 1 --clients 1 --duration "$dur"
  run "$1" ceiling noop-100 noop --endpoints "$noop" --conns 10 --clients 100 \
    --duration "$dur"
  run "$1" ceiling noop-1000 noop --endpoints "$noop" --conns 100 --clients 1000 \
    --duration "$dur"
  # At the put->event row's pace: the floor under that row is one call
  # there and back plus one sync, each paying for an idle machine.
  run "$1" ceiling noop-paced noop --endpoints "$noop" --conns 1 --clients 1 \
    --rate "$watch_rate" --duration "$lat_dur"
  stop_server
  run "$1" ceiling fsync fsync --dir "$work" --total 1000
  run "$1" ceiling fsync-paced fsync --dir "$work" --total "$paced_syncs" --rate "$watch_rate"
}

ceilings 0
for ((r = 1; r <= rounds; r++)); do
  for server in etcd roster; do
    echo "load at round $r, $server: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
    data_life "$r" "$server"
    ops_life "$r" "$server"
  done
done

ceilings $((rounds + 1))
echo "load after: $(uptime)" | tee -a "$out/machine.txt"
python3 - "$raw" <<'PY' | tee "$out/table.md"
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1])]
def get(server, row, f):
    vals = []
    for r in rows:
        if r["server"] == server and r["row"] == row:
            try:
                vals.append(f(r["report"]))
            except (KeyError, TypeError):
                pass
    return vals

rps = lambda r: r["rps"]
p99 = lambda r: r["latency_ms"]["p99"]
val = lambda r: r["value"]
# (label, row, metric, unit, better, target ratio or None, absolute target)
table = [
    ("put, 1 client", "put-1", rps, "req/s", "higher", 1.5, None),
    ("put, 1 client p99", "put-1", p99, "ms", "lower", None, None),
    ("put, 100 clients", "put-100", rps, "req/s", "higher", 2, None),
    ("put, 100 clients p99", "put-100", p99, "ms", "lower", 0.5, None),
    ("put, 1000 clients", "put-1000", rps, "req/s", "higher", 2, None),
    ("put, 1000 clients p99", "put-1000", p99, "ms", "lower", 0.5, None),
    ("range serializable, 1000 clients", "range-s-1000", rps, "req/s", "higher", 3, None),
    ("range linearizable, 1000 clients", "range-l-1000", rps, "req/s", "higher", None, None),
    ("lease keepalive, 100 clients", "keepalive-100", rps, "req/s", "higher", 3, None),
    ("watch delivery, 1000 watchers", "watch-1000", rps, "events/s", "higher", 2, None),
    ("put->event p99, 100 watchers @100 put/s", "watch-latency", p99, "ms", "lower", None, 1.0),
    ("register (10 clients)", "register", rps, "req/s", "higher", None, None),
    ("register p99", "register", p99, "ms", "lower", None, None),
    ("discover: visible to 100 discoverers, p99", "discover", p99, "ms", "lower", None, None),
    ("RSS after loading keys", "rss_mb", val, "MiB", "lower", 0.33, None),
    ("RSS anonymous part (RssAnon)", "rss_anon_mb", val, "MiB", "lower", None, None),
    ("restart to healthy with those keys", "restart_ms", val, "ms", "lower", 0.2, None),
]

def fmt(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"

def cell(vals):
    if not vals:
        return "n/a", None
    m = statistics.median(vals)
    return (f"{fmt(m)} ({fmt(min(vals))}–{fmt(max(vals))})" if len(vals) > 1 else fmt(m)), m

print("| row | unit | better | etcd median (min–max) | roster median (min–max) | roster/etcd | target | met |")
print("|---|---|---|---|---|---|---|---|")
for label, row, f, unit, better, target, absolute in table:
    e, em = cell(get("etcd", row, f))
    r, rm = cell(get("roster", row, f))
    ratio = rm / em if em and rm is not None else None
    if target is not None:
        tgt = f"{'≥' if better == 'higher' else '≤'} {target}×"
        met = ratio is not None and (ratio >= target if better == "higher" else ratio <= target)
    elif absolute is not None:
        tgt = f"≤ {absolute} {unit}"
        met = rm is not None and rm <= absolute
    else:
        tgt, met = "–", None
    print(f"| {label} | {unit} | {better} | {e} | {r} | "
          f"{'n/a' if ratio is None else f'{ratio:.2f}×'} | {tgt} | "
          f"{'–' if met is None else ('yes' if met else '**no**')} |")

errs = [(r["server"], r["row"], r["round"], r["report"].get("errors", 0))
        for r in rows if isinstance(r["report"].get("errors"), int) and r["report"]["errors"] > 0]
print()
print("Ceilings on this machine (no registry involved):")
for row, what in [("noop-1", "no-op tonic unary, 1 client"),
                  ("noop-100", "no-op tonic unary, 100 clients / 10 conns"),
                  ("noop-1000", "no-op tonic unary, 1000 clients / 100 conns")]:
    v = get("ceiling", row, rps)
    l = get("ceiling", row, p99)
    c = [r["server_cpu_s"] * 1e6 / r["report"]["count"] for r in rows
         if r["server"] == "ceiling" and r["row"] == row and r["report"].get("count")]
    if v:
        print(f"- {what}: {' / '.join(fmt(x) for x in v)} req/s (before / after the rounds), "
              f"p99 {' / '.join(f'{x:.2f}' for x in l)} ms, "
              f"server CPU {' / '.join(f'{x:.1f}' for x in c)} µs per call")
fs = [r["report"] for r in rows if r["row"] == "fsync"]
for f in fs:
    lm = f["latency_ms"]
    print(f"- fsync (fdatasync) of a 256-byte append: p50 {lm['p50']:.2f} ms, "
          f"p99 {lm['p99']:.2f} ms ({f['rps']:,.0f} syncs/s from one writer)")
paced = [(r["report"], s["report"]) for r, s in zip(
    [r for r in rows if r["row"] == "noop-paced"], [r for r in rows if r["row"] == "fsync-paced"])]
for call, sync in paced:
    c, s = call["latency_ms"], sync["latency_ms"]
    print(f"- at {sync['params']['rate']:.0f} a second (the put->event row's pace): a no-op call "
          f"p50 {c['p50']:.2f} / p99 {c['p99']:.2f} ms, one sync p50 {s['p50']:.2f} / "
          f"p99 {s['p99']:.2f} ms; together p50 {c['p50'] + s['p50']:.2f} ms, the floor under "
          f"a durable put and its event")
print()
print("Server CPU per operation (user + system CPU of the server process during")
print("the run, divided by the operations it completed; lower is better), and")
print("the cores the load generator itself used during the same runs:")
print()
print("| row | etcd µs/op | roster µs/op | roster/etcd | generator cores, etcd run | generator cores, roster run |")
print("|---|---|---|---|---|---|")
def cpu_per_op(r):
    return r["server_cpu_s"] * 1e6 / r["report"]["count"]
def gen_cores(r):
    return r["report"]["client_cpu_s"] / r["report"]["duration_s"]
def med(server, row, f):
    vals = []
    for r in rows:
        if r["server"] == server and r["row"] == row:
            try:
                vals.append(f(r))
            except (KeyError, TypeError, ZeroDivisionError):
                pass
    return statistics.median(vals) if vals else None
seen = []
for label, row, f, unit, better, target, absolute in table:
    if f is not rps or row in seen:
        continue
    seen.append(row)
    e, r = med("etcd", row, cpu_per_op), med("roster", row, cpu_per_op)
    ge, gr = med("etcd", row, gen_cores), med("roster", row, gen_cores)
    ratio = f"{r / e:.2f}×" if e and r is not None else "n/a"
    show = lambda x, d=1: "n/a" if x is None else f"{x:.{d}f}"
    print(f"| {label} | {show(e)} | {show(r)} | {ratio} | {show(ge, 2)} | {show(gr, 2)} |")

if errs:
    print()
    print("Runs with errors (server, row, round, errors):", errs)
PY
echo "raw results: $raw" >&2
