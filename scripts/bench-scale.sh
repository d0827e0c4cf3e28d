#!/usr/bin/env bash
# 100k watchers and 100k kept-alive leases on one node, Roster and etcd 3.4:
# memory per watcher, memory per lease and server CPU per keepalive.
#
#   scripts/bench-scale.sh [--quick] [--rounds N] [--only LIVES] [--out DIR]
#                          [--no-build]
#
# --quick    10k watchers and leases with short holds: a smoke run of about a
#            minute. The full run takes about 5 minutes per round.
# --rounds   rounds of roster, etcd (default 1); cells are medians.
# --only     a comma-separated list of the lives below to run (default all).
# --out      where raw results go (default bench/runs/<UTC date>-scale);
#            raw.jsonl holds every measurement, timeline.tsv the server's
#            CPU and RSS each second of every hold, table.md the table,
#            machine.txt the machine and its load, *.log the servers' logs
#            and each bench's stderr.
# --no-build use the existing target/release/roster.
#
# Each server runs on free loopback ports with a fresh data directory, one
# at a time, and gets three fresh lives per round:
#   streams:  the same with 1000 watchers, one per stream: what a stream
#             costs apart from the watchers on it.
#   watchers: VmRSS once it answers, then `roster bench hold-watchers`
#             (N watchers on N distinct keys, 1000 streams over 10
#             connections); VmRSS during the hold, the median of one
#             sample a second (etcd's moves with Go's garbage collector).
#             Memory per watcher = (RSS holding - RSS before) / N; it
#             includes the streams' and connections' share. RssAnon is
#             recorded beside VmRSS: etcd maps its database file, and
#             VmRSS counts the resident pages of that file too.
#   leases:   VmRSS once it answers, then `roster bench hold-leases` (N
#             leases of TTL 30 s, each renewed every 10 s over 100 streams
#             on 10 connections). Server CPU (utime + stime from
#             /proc/PID/stat) over the hold, which begins once every lease
#             is granted and the server has caught up with the keepalives
#             sent meanwhile, divided by the keepalives answered in it.
#   idle-crowd: N watchers on one prefix (1000 streams over 10 connections)
#             that are never read, while 2 clients put 1 KiB values under
#             it for 20 s (`roster bench watched-puts`): puts per second,
#             and VmRSS while the puts run.
#   reading-crowd: the same with every stream read as fast as the bench
#             can, also counting the events that arrive.
# The bench prints "holding" and "hold over" on stderr; the script reads
# /proc when it sees them (polling every 20 ms), so its window matches the
# bench's to within a few tens of milliseconds. The load generator shares
# the machine with the server, identically for both; the load average is
# kept with the results.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

quick=0
rounds=1
out=""
only="streams,watchers,leases,idle-crowd,reading-crowd"
USAGE="$0 [--quick] [--rounds N] [--only LIVES] [--out DIR] [--no-build]"
# shellcheck disable=SC2034 # read by parse_args
declare -A FLAGS=([--quick]=quick=1 [--rounds]=rounds [--only]=only [--out]=out
  [--no-build]=build=0)
parse_args "$@"

if ((quick)); then
  n=10000; watch_hold=5s; lease_hold=10s; put_time=5s
else
  n=100000; watch_hold=20s; lease_hold=30s; put_time=20s
fi
# wants LIFE: true if LIFE is among --only.
wants() { [[ ",$only," == *",$1,"* ]]; }
ttl=30

need etcd etcd-server
need python3 python3
roster_binary

out="${out:-$(new_run_dir scale)}"
mkdir -p "$out"
raw="$out/raw.jsonl"
timeline="$out/timeline.tsv"
: >"$raw"
printf 'round\tserver\tlife\tms_into_hold\tcpu_ticks\trss_kb\trss_anon_kb\n' >"$timeline"
make_work scale
# At exit, the servers' logs and each bench's stderr join the results.
on_exit() {
  cp "$work"/*.log "$out/" 2>/dev/null || true
}

# start SERVER DATA_DIR: starts the server on fresh free ports and waits
# until it answers.
start() {
  local client_port peer_port
  read -r client_port peer_port <<<"$(free_ports 2)"
  ep="127.0.0.1:$client_port"
  peer="127.0.0.1:$peer_port"
  start_server "$1" "$2" "$work/$1.log"
  wait_ready 60s
}

median() { sort -n "$1" | awk '{v[NR] = $1} END {print NR ? v[int((NR + 1) / 2)] : "null"}'; }
peak() { sort -n "$1" | tail -1 | grep . || echo null; }

# hold ROUND SERVER LIFE ARGS...: runs `roster bench ARGS --json` against
# the running server and records RSS before, RSS at the end of the hold,
# and the server's CPU over the hold.
hold() {
  local round="$1" server="$2" life="$3"; shift 3
  local err="$work/bench-$server-$life-$round.log" json="$work/report.json"
  : >"$err"
  # Let start-up work (etcd's first snapshot, allocator warm-up) settle.
  sleep 2
  local rss0 anon0 bpid c0 c1 t0 t1 now next rss1 rss_peak anon1 load
  : >"$work/rss-samples"
  : >"$work/anon-samples"
  rss0=$(rss_kb "$pid")
  anon0=$(anon_kb "$pid")
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  log "round $round $server: $life (RSS before $((rss0 / 1024)) MiB, load $load)"
  "$roster" bench "$@" --endpoints "$ep" --json >"$json" 2>"$err" &
  bpid=$!
  pids+=("$bpid")
  until grep -q "holding" "$err"; do
    kill -0 "$bpid" 2>/dev/null || break
    sleep 0.02
  done
  c0=$(cpu_ticks "$pid")
  t0=$(date +%s%N)
  log "  $(grep -m1 holding "$err" || echo "bench ended before the hold")"
  next=$t0
  while ! grep -q "hold over" "$err" && kill -0 "$bpid" 2>/dev/null; do
    now=$(date +%s%N)
    if ((now >= next)); then
      rss1=$(rss_kb "$pid")
      anon1=$(anon_kb "$pid")
      echo "$rss1" >>"$work/rss-samples"
      echo "$anon1" >>"$work/anon-samples"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$server" "$life" "$(((now - t0) / 1000000))" \
        "$(cpu_ticks "$pid")" "$rss1" "$anon1" >>"$timeline"
      next=$((next + 1000000000))
    fi
    sleep 0.02
  done
  c1=$(cpu_ticks "$pid")
  t1=$(date +%s%N)
  rss1=$(median "$work/rss-samples")
  rss_peak=$(peak "$work/rss-samples")
  anon1=$(median "$work/anon-samples")
  local rc=0
  wait "$bpid" || rc=$?
  forget "$bpid"
  if ((rc != 0)); then
    log "  roster bench $1 exited with $rc against $server: $(tail -1 "$err")"
  fi
  local report
  report=$(cat "$json")
  [ -n "$report" ] || report=null
  printf '{"round":%s,"server":"%s","life":"%s","n":%s,"rss_before_kb":%s,"rss_hold_kb":%s,"rss_peak_kb":%s,"anon_before_kb":%s,"anon_hold_kb":%s,"cpu_s":%s,"window_s":%s,"exit":%s,"load":"%s","report":%s}\n' \
    "$round" "$server" "$life" "$n" "$rss0" "$rss1" "$rss_peak" "$anon0" "$anon1" \
    "$(awk -v a="$c0" -v b="$c1" 'BEGIN {print (b - a) / 100}')" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print (b - a) / 1e9}')" \
    "$rc" "$load" "$report" >>"$raw"
}

{
  machine_header etcd
  echo "rounds: $rounds$([ "$quick" = 1 ] && echo ', quick')"
  echo "n: $n watchers / leases; watch hold $watch_hold, lease hold $lease_hold, ttl $ttl s"
  echo "load before: $(uptime)"
} | tee "$out/machine.txt"

for ((r = 1; r <= rounds; r++)); do
  for server in roster etcd; do
    if wants streams; then
      start "$server" "$work/$server-streams-$r"
      hold "$r" "$server" streams hold-watchers --watchers 1000 --streams 1000 --conns 10 \
        --hold 5s
      stop_server
    fi
    if wants watchers; then
      start "$server" "$work/$server-watch-$r"
      hold "$r" "$server" watchers hold-watchers --watchers "$n" --streams 1000 --conns 10 \
        --hold "$watch_hold"
      stop_server
    fi
    if wants leases; then
      start "$server" "$work/$server-lease-$r"
      hold "$r" "$server" leases hold-leases --leases "$n" --streams 100 --conns 10 \
        --clients 100 --ttl "$ttl" --hold "$lease_hold" --no-revoke
      stop_server
    fi
    for life in idle-crowd reading-crowd; do
      wants "$life" || continue
      start "$server" "$work/$server-$life-$r"
      read_flag=()
      [ "$life" = reading-crowd ] && read_flag=(--read)
      hold "$r" "$server" "$life" watched-puts --watchers "$n" --streams 1000 --conns 10 \
        --clients 2 --val-size 1024 --duration "$put_time" --key-prefix /svc/crowd/ \
        "${read_flag[@]}"
      stop_server
    done
  done
done
echo "load after: $(uptime)" | tee -a "$out/machine.txt"

python3 - "$raw" <<'PY' | tee "$out/table.md"
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1])]

def vals(server, life, f):
    out = []
    for r in rows:
        if r["server"] == server and r["life"] == life and r["report"]:
            try:
                out.append(f(r))
            except (KeyError, TypeError, ZeroDivisionError):
                pass
    return out

mib = lambda kb: kb / 1024
def per_watcher(r):
    return (r["rss_hold_kb"] - r["rss_before_kb"]) * 1024 / r["report"]["count"]

def per_watcher_anon(r):
    return (r["anon_hold_kb"] - r["anon_before_kb"]) * 1024 / r["report"]["count"]

table = [
    ("memory per stream, with its one watcher", "streams", per_watcher, "bytes"),
    ("RSS before", "watchers", lambda r: mib(r["rss_before_kb"]), "MiB"),
    ("RSS holding the watchers", "watchers", lambda r: mib(r["rss_hold_kb"]), "MiB"),
    ("memory per watcher", "watchers", per_watcher, "bytes"),
    ("memory per watcher, RssAnon", "watchers", per_watcher_anon, "bytes"),
    ("watcher creation", "watchers", lambda r: r["report"]["rps"], "watchers/s"),
    ("watcher creation p99", "watchers", lambda r: r["report"]["latency_ms"]["p99"], "ms"),
    ("RSS before", "leases", lambda r: mib(r["rss_before_kb"]), "MiB"),
    ("RSS holding the leases", "leases", lambda r: mib(r["rss_hold_kb"]), "MiB"),
    ("memory per lease", "leases",
     lambda r: (r["rss_hold_kb"] - r["rss_before_kb"]) * 1024 / r["report"]["extra"]["granted"],
     "bytes"),
    ("memory per lease, RssAnon", "leases",
     lambda r: (r["anon_hold_kb"] - r["anon_before_kb"]) * 1024 / r["report"]["extra"]["granted"],
     "bytes"),
    ("lease grants (100 clients)", "leases", lambda r: r["report"]["extra"]["grants_per_s"], "grants/s"),
    ("keepalives answered in the hold", "leases", lambda r: r["report"]["rps"], "per s"),
    ("keepalive round trip p50", "leases", lambda r: r["report"]["latency_ms"]["p50"], "ms"),
    ("keepalive round trip p99", "leases", lambda r: r["report"]["latency_ms"]["p99"], "ms"),
    ("server CPU in the hold", "leases", lambda r: r["cpu_s"] / r["window_s"], "cores"),
    ("server CPU per keepalive", "leases",
     lambda r: r["cpu_s"] * 1e6 / (r["report"]["rps"] * r["window_s"]), "µs"),
    ("cores per 1k keepalives/s", "leases",
     lambda r: (r["cpu_s"] / r["window_s"]) / (r["report"]["rps"] / 1000), "cores"),
    ("leases lost", "leases", lambda r: r["report"]["extra"]["lost_leases"], "leases"),
    ("wait after the last grant until caught up", "leases",
     lambda r: r["report"]["extra"]["settle_s"], "s"),
    ("puts, watchers not reading", "idle-crowd", lambda r: r["report"]["rps"], "puts/s"),
    ("put p50, watchers not reading", "idle-crowd",
     lambda r: r["report"]["latency_ms"]["p50"], "ms"),
    ("put p99, watchers not reading", "idle-crowd",
     lambda r: r["report"]["latency_ms"]["p99"], "ms"),
    ("RSS while putting, watchers not reading", "idle-crowd",
     lambda r: mib(r["rss_hold_kb"]), "MiB"),
    ("peak RSS while putting, watchers not reading", "idle-crowd",
     lambda r: mib(r["rss_peak_kb"]), "MiB"),
    ("puts, watchers reading", "reading-crowd", lambda r: r["report"]["rps"], "puts/s"),
    ("put p50, watchers reading", "reading-crowd",
     lambda r: r["report"]["latency_ms"]["p50"], "ms"),
    ("put p99, watchers reading", "reading-crowd",
     lambda r: r["report"]["latency_ms"]["p99"], "ms"),
    ("events delivered, watchers reading", "reading-crowd",
     lambda r: r["report"]["extra"]["events_per_s"], "events/s"),
    ("RSS while putting, watchers reading", "reading-crowd",
     lambda r: mib(r["rss_hold_kb"]), "MiB"),
    ("peak RSS while putting, watchers reading", "reading-crowd",
     lambda r: mib(r["rss_peak_kb"]), "MiB"),
]

def fmt(x):
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"

def cell(v):
    if not v:
        return "n/a", None
    m = statistics.median(v)
    return (f"{fmt(m)} ({fmt(min(v))}–{fmt(max(v))})" if len(v) > 1 else fmt(m)), m

n = rows[0]["n"] if rows else 0
print(f"| {n:,} watchers / leases | unit | roster | etcd 3.4 | roster/etcd |")
print("|---|---|---|---|---|")
for label, life, f, unit in table:
    if not any(r["life"] == life for r in rows):
        continue
    rs, rm = cell(vals("roster", life, f))
    es, em = cell(vals("etcd", life, f))
    ratio = f"{rm / em:.2f}×" if rm is not None and em else "–"
    print(f"| {label} ({life} life) | {unit} | {rs} | {es} | {ratio} |")

# The watchers' cost beyond their streams': the two lives' RSS growth,
# per watcher added on top of one per stream.
def marginal(server):
    s, w = [[r for r in rows if r["server"] == server and r["life"] == life and r["report"]]
            for life in ("streams", "watchers")]
    if not s or not w:
        return None
    grow = lambda r: (r["rss_hold_kb"] - r["rss_before_kb"]) * 1024
    med = lambda rs, f: statistics.median(f(r) for r in rs)
    added = med(w, lambda r: r["report"]["count"]) - med(s, lambda r: r["report"]["count"])
    return (med(w, grow) - med(s, grow)) / added if added > 0 else None

rm, em = marginal("roster"), marginal("etcd")
if rm is not None and em is not None:
    print(f"| memory per watcher beyond one per stream (watchers − streams lives) | bytes | "
          f"{fmt(rm)} | {fmt(em)} | {rm / em:.2f}× |")

behind = [(r["server"], r["round"]) for r in rows
          if r["life"] == "leases" and r["report"]
          and not r["report"]["extra"].get("caught_up_before_hold", True)]
if behind:
    print()
    print("Still behind on keepalives when the hold began (server, round):", behind)

bad = [(r["server"], r["life"], r["round"], r["exit"],
        (r["report"] or {}).get("errors"), (r["report"] or {}).get("error_samples"))
       for r in rows if r["exit"] != 0 or not r["report"] or r["report"].get("errors")]
if bad:
    print()
    print("Runs with errors (server, life, round, exit, errors, samples):")
    for b in bad:
        print("-", b)
PY
echo "raw results: $raw" >&2
