#!/usr/bin/env bash
# The seed story in one command: a registry, three HTTP backends that
# register themselves, a gateway that discovers them, and steady traffic
# through it while one backend leaves gracefully, another is killed with
# SIGKILL and a fourth joins. Every second it prints how many requests each
# backend answered and how many failed.
#
#   ./scripts/demo.sh                      # builds with cargo; ~20 s after that
#   ROSTER=/path/to/roster ./scripts/demo.sh
#   BALANCER=p2c ./scripts/demo.sh         # the gateway's default balancer
#   KEEP=1 ./scripts/demo.sh               # keep the logs (path printed at exit)
#
# Everything runs on 127.0.0.1 with ports picked by the kernel, in a
# temporary directory that is removed at exit, together with every process
# the script started. It never reads stdin. Exit status: 0 when no request
# failed, 1 otherwise.
set -euo pipefail

cd "$(dirname "$0")/.."

# Backends leave their record for at most this long after SIGKILL.
TTL=3
# A gracefully stopped backend keeps serving this long after deregistering,
# so that the gateway hears of the removal before the port closes.
DRAIN_MS=300
# Requests per curl invocation: they share one keep-alive connection.
BATCH=20
# round_robin makes the spread easy to read. The gateway's default, p2c,
# follows latency: with one client sending requests one at a time it sends
# nearly all of them to whichever instance has answered fastest so far,
# and the others get a probe a second.
BALANCER=${BALANCER:-round_robin}

if [[ -z "${ROSTER:-}" ]]; then
    echo "building roster (cargo build --release -p roster) ..."
    cargo build --release --quiet -p roster
    ROSTER=target/release/roster
fi
ROSTER=$(realpath "$ROSTER")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/roster-demo.XXXXXX")
PIDS=()
LOADER=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # The load loop first, so it does not count the shutdown as failures.
    if [[ -n "$LOADER" ]]; then
        touch "$WORK/stop"
        kill -TERM "$LOADER" 2>/dev/null || true
        wait "$LOADER" 2>/dev/null || true
    fi
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # SIGTERM makes each of them drain and exit; give them a moment, then
    # make sure.
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ -n "${KEEP:-}" ]]; then
        echo "logs kept in $WORK"
    else
        # On a failure, not on Ctrl-C.
        if ((status != 0 && status != 130 && status != 143)); then
            echo "logs of the failed run:" >&2
            tail -n 5 "$WORK"/*.log >&2 || true
        fi
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_line LOG PID REGEX: waits (at most 15 s) until LOG has a line
# matching REGEX and prints the first http://ADDR of that line.
wait_line() {
    local log=$1 pid=$2 regex=$3 line
    for _ in $(seq 150); do
        line=$(grep -m1 -E "$regex" "$log" 2>/dev/null || true)
        if [[ -n "$line" ]]; then
            [[ $line =~ http://([^ ]+) ]] && echo "${BASH_REMATCH[1]}"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo: process $pid exited; its log $log:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "demo: no line matching '$regex' in $log after 15 s" >&2
    return 1
}

# start NAME ARGS...: runs roster ARGS in the background, logging to
# $WORK/NAME.log; sets LAST_PID.
start() {
    local name=$1
    shift
    "$ROSTER" "$@" </dev/null >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

declare -A BACKEND_PID BACKEND_ADDR
start_backend() {
    local id=$1 addr
    start "$id" echo --service web --id "$id" --endpoints "$REGISTRY" \
        --ttl "$TTL" --drain-delay-ms "$DRAIN_MS"
    BACKEND_PID[$id]=$LAST_PID
    addr=$(wait_line "$WORK/$id.log" "$LAST_PID" '^roster: echo ')
    BACKEND_ADDR[$id]=$addr
    echo "   $id serving on $addr, registered as /roster/services/web/$id (lease TTL ${TTL}s)"
}

say() { printf '\n== %s\n' "$*"; }

# Names the current phase for the load loop; renamed into place, so that
# the loop never reads a half-written file.
phase() {
    echo "$1" >"$WORK/phase.new"
    mv "$WORK/phase.new" "$WORK/phase"
}

# Prints the instances the gateway routes to now, from its admin /routes.
listed() {
    local ids
    ids=$(curl -s --max-time 2 "http://$ADMIN/routes" | tr -d ' \n' |
        grep -oE '"id":"[^"]*","out":(true|false)' |
        sed -E 's/"id":"([^"]*)","out":false/\1/; s/"id":"([^"]*)","out":true/\1 (ejected)/' |
        paste -sd, - | sed 's/,/, /g')
    echo "   -- the gateway routes to: ${ids:-nobody}"
}

# The load loop: a single client sending GET requests through the gateway
# back to back over a keep-alive connection. It prints a line per second
# with how many answers each instance gave and how many failed (a status
# other than 200, or no answer), and writes its totals per phase to
# $WORK/totals when told to stop. The phase is read from $WORK/phase.
load() {
    local url="http://$GATEWAY/demo" urls=() i
    for ((i = 0; i < BATCH; i++)); do urls+=("$url"); done
    local -A sec total
    local instances=(web-1 web-2 web-3 web-4)
    local second=$EPOCHSECONDS start=$EPOCHSECONDS phase="" inst line
    local -a phases=()
    trap 'touch "$WORK/stop"' TERM
    printf '%5s %7s %7s %7s %7s %7s   %s\n' time "${instances[@]}" failed phase
    while [[ ! -e "$WORK/stop" ]]; do
        inst=""
        while IFS= read -r line; do
            [[ $line =~ \"instance\":\"([^\"]*)\" ]] && inst=${BASH_REMATCH[1]}
            if [[ $line =~ '=> '([0-9]{3})$ ]]; then
                read -r phase <"$WORK/phase" || true
                if [[ ${BASH_REMATCH[1]} == 200 && -n $inst ]]; then
                    sec[$inst]=$((${sec[$inst]:-0} + 1))
                    total[$phase/$inst]=$((${total[$phase/$inst]:-0} + 1))
                else
                    sec[failed]=$((${sec[failed]:-0} + 1))
                    total[$phase/failed]=$((${total[$phase/failed]:-0} + 1))
                    echo "${BASH_REMATCH[1]} ${line%=> *}" >>"$WORK/failures"
                fi
                inst=""
            fi
        # (A -w format that starts with @ would name a file.)
        done < <(curl -s --max-time 5 -w '=> %{http_code}\n' "${urls[@]}" 2>/dev/null || true)
        [[ " ${phases[*]} " == *" $phase "* ]] || phases+=("$phase")
        if ((EPOCHSECONDS != second)); then
            local row=()
            for inst in "${instances[@]}"; do row+=("${sec[$inst]:-.}"); done
            printf '%4ds %7s %7s %7s %7s %7s   %s\n' $((second - start)) "${row[@]}" \
                "${sec[failed]:-0}" "$phase"
            sec=()
            second=$EPOCHSECONDS
        fi
    done
    for phase in "${phases[@]}"; do
        local row=()
        for inst in "${instances[@]}" failed; do row+=("${total[$phase/$inst]:-0}"); done
        echo "$phase ${row[*]}"
    done >"$WORK/totals"
}

# ---------------------------------------------------------------------------

say "a registry"
start registry serve --name demo --data-dir "$WORK/registry.data" \
    --listen-client-urls http://127.0.0.1:0
REGISTRY=$(wait_line "$WORK/registry.log" "$LAST_PID" 'ready to serve client requests')
echo "   roster serve: etcd v3 API on $REGISTRY"

say "three backends register themselves under the service 'web'"
for id in web-1 web-2 web-3; do start_backend "$id"; done

say "a gateway routes / to whatever instances of 'web' the registry lists ($BALANCER)"
start gateway gateway --endpoints "$REGISTRY" --route /=web --balancer "$BALANCER" \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
GATEWAY_PID=$LAST_PID
GATEWAY=$(wait_line "$WORK/gateway.log" "$LAST_PID" '^roster: gateway listening')
ADMIN=$(grep -m1 -oE 'admin http://[^)]+' "$WORK/gateway.log" | sed 's|admin http://||')
echo "   roster gateway on $GATEWAY (metrics on $ADMIN)"

say "traffic: one client, GET requests back to back, counted per second"
phase "three backends"
load &
LOADER=$!
sleep 4

say "SIGTERM web-1: it deregisters, serves ${DRAIN_MS} ms more while the gateway hears of it, drains, exits"
phase "web-1 stopped"
kill -TERM "${BACKEND_PID[web-1]}"
sleep 1
listed
sleep 3

say "SIGKILL web-2: no goodbye; its record stays until its ${TTL}s lease expires"
phase "web-2 killed"
# Disowned first, or bash would report "Killed" when it reaps it.
disown "${BACKEND_PID[web-2]}"
kill -KILL "${BACKEND_PID[web-2]}"
sleep 1
listed
echo "   -- connects to web-2 are refused: each such GET is retried on another instance"
sleep "$TTL"
listed
sleep 1

say "web-4 starts and registers; the gateway sends it traffic as soon as the registry lists it"
phase "web-4 joined"
start_backend web-4
sleep 1
listed
sleep 3

touch "$WORK/stop"
wait "$LOADER" || true
LOADER=""

say "summary"
printf '   %-16s %7s %7s %7s %7s %7s\n' phase web-1 web-2 web-3 web-4 failed
all=0 failed=0
while read -r a b w1 w2 w3 w4 f; do
    printf '   %-16s %7s %7s %7s %7s %7s\n' "$a $b" "$w1" "$w2" "$w3" "$w4" "$f"
    all=$((all + w1 + w2 + w3 + w4 + f))
    failed=$((failed + f))
done <"$WORK/totals"
echo "   $all requests through the gateway, $failed failed"

# What the gateway saw behind the scenes: failed attempts it retried and
# instances it took out of rotation.
metrics=$(curl -s "http://$ADMIN/metrics" | grep -E '^roster_gateway_(upstream_errors|ejections)_total' || true)
if [[ -n "$metrics" ]]; then
    for id in "${!BACKEND_ADDR[@]}"; do
        metrics=${metrics//\"${BACKEND_ADDR[$id]}\"/\"$id\"}
    done
    echo "   the gateway's metrics: attempts that failed (a GET is retried elsewhere), ejections"
    while IFS= read -r line; do echo "     $line"; done <<<"$metrics"
fi
if [[ -s "$WORK/failures" ]]; then
    echo "   failed requests (status, answer):"
    head -n 5 "$WORK/failures" | sed 's/^/     /'
fi
if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
    echo "demo: the gateway died" >&2
    exit 1
fi
((failed == 0))
