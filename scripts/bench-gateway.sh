#!/usr/bin/env bash
# The gateway's overhead: wrk straight to a `roster echo` backend versus
# through `roster gateway` to that same backend, in one run, alternating
# the targets round by round so that a disturbance (another process on the
# machine) hits both.
#
#   ./scripts/bench-gateway.sh                       # builds with cargo
#   ROSTER=target/release/roster ROUNDS=5 ./scripts/bench-gateway.sh
#
# Settings (environment): ROUNDS (3), DURATION (10s) and CONNS (64) and
# THREADS (2) of the loaded runs, LIGHT_DURATION (5s) of the one-connection
# runs, PIN=1 to pin wrk to CPU 0 and the roster processes to CPU 1,
# MAX_OTHER (5) and TRIES (4): see below. OUT: where the results go
# (default bench/runs/<UTC date>-gateway): run.log holds every run's line,
# table.md the medians (also printed on stdout), machine.txt the machine,
# the settings and the load.
#
# Targets, each measured once per round in this order:
#   direct     wrk -> echo
#   gateway    wrk -> gateway -> echo, default settings: one access-log line
#              per request, written to a file
#   gw-nolog   the same with access logs off
#              (RUST_LOG=info,roster_gateway::access=off)
#
# Besides wrk's requests/s and latency percentiles it reports the CPU time
# each process spent per request (from /proc/PID/stat), which does not
# depend on how the scheduler shared the cores, and "other": the share of
# the machine's CPU used by processes that are not part of the benchmark
# during that run (compiles of other users, say), from /proc/stat. A run
# with more than MAX_OTHER percent of "other" is disturbed: the script
# waits for the machine to be quiet and runs it again, up to TRIES times in
# all, then keeps the last attempt (its "other" column says so).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
USAGE="$0 (settings in the environment: see the top of the script)"
# shellcheck disable=SC2034 # read by parse_args: no flags
declare -A FLAGS=()
parse_args "$@"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
LIGHT_DURATION=${LIGHT_DURATION:-5s}
PIN=${PIN:-}
MAX_OTHER=${MAX_OTHER:-5}
TRIES=${TRIES:-4}
OUT=${OUT:-$(new_run_dir gateway)}

need wrk wrk
need curl curl
roster=${ROSTER:-}
roster_binary
ROSTER=$roster
SERVER_CPU=() WRK_CPU=()
if [[ -n "$PIN" ]]; then
    SERVER_CPU=(taskset -c 1)
    WRK_CPU=(taskset -c 0)
fi

# At exit the gateways, the echo backend and the registry get SIGTERM and a
# moment to drain before SIGKILL.
# shellcheck disable=SC2034 # read by the exit trap in lib.sh
grace=1
make_work bench-gateway "${TMPDIR:-/tmp}"
WORK=$work
mkdir -p "$OUT"
# A private copy: a rebuild during the run must not change what is measured.
cp "$ROSTER" "$WORK/roster"
ROSTER=$WORK/roster

# note LINE: prints LINE on stderr and keeps it in the run's run.log.
note() {
    echo "$*" | tee -a "$OUT/run.log" >&2
}

# start NAME ARGS...: runs roster ARGS in the background (with the
# variables in the array EXTRA_ENV), logging to $WORK/NAME.log; sets LAST_PID.
EXTRA_ENV=()
start() {
    local name=$1
    shift
    spawn "$WORK/$name.log" env "${EXTRA_ENV[@]}" "${SERVER_CPU[@]}" "$ROSTER" "$@"
    LAST_PID=$pid
}

# Busy and total ticks of the whole machine.
machine_ticks() {
    local user nice system idle iowait irq softirq steal rest
    read -r _ user nice system idle iowait irq softirq steal rest </proc/stat
    echo "$((user + nice + system + irq + softirq + steal)) $((user + nice + system + idle + iowait + irq + softirq + steal))"
}

# busy_percent SECONDS: how busy the machine is over that many seconds.
busy_percent() {
    local b0 t0 b1 t1
    read -r b0 t0 <<<"$(machine_ticks)"
    sleep "$1"
    read -r b1 t1 <<<"$(machine_ticks)"
    echo $((100 * (b1 - b0) / (t1 - t0)))
}

{
    machine_header wrk
    echo "settings: ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS THREADS=$THREADS LIGHT_DURATION=$LIGHT_DURATION PIN=$PIN MAX_OTHER=$MAX_OTHER TRIES=$TRIES"
    echo "load before: $(uptime)"
} >"$OUT/machine.txt"
note "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
busy=$(busy_percent 2)
note "before starting: the machine is ${busy}% busy; load average $(cut -d' ' -f1-3 /proc/loadavg)"
((busy < 10)) || note "bench-gateway: warning: something else is using the CPUs; the figures will be disturbed"

start registry serve --data-dir "$WORK/registry.data" --listen-client-urls http://127.0.0.1:0
REGISTRY_PID=$LAST_PID
REGISTRY=$(wait_addr "$WORK/registry.log" "$LAST_PID" 'ready to serve client requests')
start echo echo --service web --endpoints "$REGISTRY"
ECHO_PID=$LAST_PID
ECHO=$(wait_addr "$WORK/echo.log" "$LAST_PID" '^roster: echo ')
start gateway gateway --endpoints "$REGISTRY" --route /=web \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
GATEWAY_PID=$LAST_PID
GATEWAY=$(wait_addr "$WORK/gateway.log" "$LAST_PID" '^roster: gateway listening')
EXTRA_ENV=("RUST_LOG=info,roster_gateway::access=off")
start gw-nolog gateway --endpoints "$REGISTRY" --route /=web \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
EXTRA_ENV=()
NOLOG_PID=$LAST_PID
NOLOG=$(wait_addr "$WORK/gw-nolog.log" "$LAST_PID" '^roster: gateway listening')

declare -A URL=([direct]="http://$ECHO/" [gateway]="http://$GATEWAY/" [gw-nolog]="http://$NOLOG/")
declare -A PROXY_PID=([direct]="" [gateway]=$GATEWAY_PID [gw-nolog]=$NOLOG_PID)

# Both gateways must route to the echo backend before anything is measured.
for t in gateway gw-nolog; do
    body=$(curl -s --max-time 5 "${URL[$t]}bench-check" || true)
    [[ $body == *"\"instance\":\"$ECHO\""* ]] || {
        echo "bench-gateway: $t does not reach the backend: $body" >&2
        exit 1
    }
done

# run KIND TARGET ROUND WRK-ARGS...: one wrk run, printed to stderr and
# left in $WORK/row as "kind target round req/s p50-ms p99-ms gateway-us
# echo-us wrk-us other-% errors" (CPU in microseconds per request).
run() {
    local kind=$1 target=$2 round=$3
    shift 3
    local proxy=${PROXY_PID[$target]} g0=0 g1=0 e0 e1 r0 r1 m0 m1 w
    e0=$(cpu_ticks "$ECHO_PID")
    r0=$(cpu_ticks "$REGISTRY_PID")
    [[ -n $proxy ]] && g0=$(cpu_ticks "$proxy")
    m0=$(machine_ticks)
    # wrk runs in a subshell so that its CPU time can be read from the
    # subshell's reaped-children counters.
    w=$(
        "${WRK_CPU[@]}" wrk "$@" --latency "${URL[$target]}" >"$WORK/wrk.out"
        read -r stat <"/proc/$BASHPID/stat"
        stat=${stat##*) }
        read -ra f <<<"$stat"
        echo $((f[13] + f[14]))
    )
    m1=$(machine_ticks)
    e1=$(cpu_ticks "$ECHO_PID")
    r1=$(cpu_ticks "$REGISTRY_PID")
    [[ -n $proxy ]] && g1=$(cpu_ticks "$proxy")
    local ours=$(((e1 - e0) + (r1 - r0) + (g1 - g0) + w))
    awk -v kind="$kind" -v target="$target" -v round="$round" \
        -v gw=$((g1 - g0)) -v echo_=$((e1 - e0)) -v wrk="$w" -v ours=$ours \
        -v busy=$((${m1% *} - ${m0% *})) -v total=$((${m1#* } - ${m0#* })) '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /s$/) return v * 1000
            return v + 0
        }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /requests in/ { n = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx/ { bad += $NF }
        /Socket errors/ { gsub(",", ""); bad += $4 + $6 + $8 + $10 }
        END {
            # Clock ticks are 10 ms; per request in microseconds.
            us = 10000 / (n > 0 ? n : 1)
            other = total > 0 ? 100 * (busy - ours) / total : 0
            if (other < 0) other = 0
            printf "%s %s %d %.0f %.3f %.3f %.1f %.1f %.1f %.0f %d\n", kind, target, round,
                rps, p50, p99, gw * us, echo_ * us, wrk * us, other, bad
        }' "$WORK/wrk.out" | tee "$WORK/row" | awk '{
            printf "  %-6s %-9s round %d  %9s req/s  p50 %7.3f ms  p99 %7.3f ms  cpu/req: gateway %5s us, echo %5s us, wrk %5s us  other %2d%%%s\n",
                $1, $2, $3, $4, $5, $6, ($2 == "direct" ? "-" : $7), $8, $9, $10, ($11 > 0 ? "  ERRORS " $11 : "")
        }' | tee -a "$OUT/run.log" >&2
}

# measure ARGS...: run ARGS, again while disturbed (see the top), and keep
# the row in $WORK/results.
measure() {
    local try other
    for try in $(seq "$TRIES"); do
        run "$@"
        read -r _ _ _ _ _ _ _ _ _ other _ <"$WORK/row"
        ((other <= MAX_OTHER)) && break
        ((try < TRIES)) || break
        note "  (disturbed: ${other}% of the CPUs busy elsewhere; waiting for quiet, then again)"
        for _ in $(seq 60); do
            (($(busy_percent 2) <= MAX_OTHER)) && break
        done
    done
    cat "$WORK/row" >>"$WORK/results"
}

targets=(direct gateway gw-nolog)
pin_note="unpinned"
[[ -n "$PIN" ]] && pin_note="wrk on CPU 0, roster processes on CPU 1"
note "wrk -t$THREADS -c$CONNS -d$DURATION --latency, $ROUNDS rounds, $pin_note"
for t in "${targets[@]}"; do
    "${WRK_CPU[@]}" wrk -t"$THREADS" -c"$CONNS" -d2s "${URL[$t]}" >/dev/null
done
for round in $(seq "$ROUNDS"); do
    for t in "${targets[@]}"; do
        measure loaded "$t" "$round" -t"$THREADS" -c"$CONNS" -d"$DURATION"
    done
done
note "wrk -t1 -c1 -d$LIGHT_DURATION --latency (one request at a time), $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
    for t in "${targets[@]}"; do
        measure light "$t" "$round" -t1 -c1 -d"$LIGHT_DURATION"
    done
done
note "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "load after: $(uptime)" >>"$OUT/machine.txt"

# The medians per target, and the gateways' ratios to direct: a Markdown
# table on stdout.
awk '
    function median(list,    a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) {
            t = a[j]; a[j] = a[j - 1]; a[j - 1] = t
        }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    {
        k = $1 SUBSEP $2
        rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6
        gw[k] = gw[k] " " $7; ec[k] = ec[k] " " $8; oth[k] = oth[k] " " $10
        err[k] += $11
        if (!(k in seen)) { seen[k] = 1; order[++n] = k }
    }
    END {
        print "| load | target | req/s | p50 ms | p99 ms | req/s vs direct | p99 vs direct | gateway CPU us/req | echo CPU us/req | other CPU % | errors |"
        print "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= n; i++) {
            k = order[i]; split(k, kt, SUBSEP)
            d = kt[1] SUBSEP "direct"
            r = median(rps[k]); q = median(p99[k])
            printf "| %s | %s | %.0f | %.3f | %.3f | %s | %s | %s | %.1f | %.0f | %d |\n",
                kt[1], kt[2], r, median(p50[k]), q,
                kt[2] == "direct" ? "1" : sprintf("%.2f", r / median(rps[d])),
                kt[2] == "direct" ? "1" : sprintf("%.2f", q / median(p99[d])),
                kt[2] == "direct" ? "-" : sprintf("%.1f", median(gw[k])),
                median(ec[k]), median(oth[k]), err[k]
        }
    }' "$WORK/results" | tee "$OUT/table.md"
echo "results: $OUT" >&2
