#!/usr/bin/env bash
# Ad-hoc: is Roster's keepalive p99 at 100k leases the lease checkpoint?
set -euo pipefail
R=${ROSTER:-target/release/roster}
work=$(mktemp -d /tmp/stall.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill -9 $p 2>/dev/null || true; done; rm -rf $work' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { ep=127.0.0.1:$(port); RUST_LOG=warn $R serve --data-dir $work/d$1 --listen-client-urls http://$ep >>$work/roster.log 2>&1 & pid=$!; pids+=($pid); $R bench ready --endpoints $ep >/dev/null; }
summ() { python3 "$(dirname "$0")/summ.py"; }
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "A. idle Roster: serializable range, 200/s for 20 s"
start a
$R bench range --endpoints $ep --load-keys 1000 --consistency s --rate 200 --clients 4 --duration 20s --json | summ
kill -9 $pid
echo "B. Roster holding 100k leases of TTL 30 s (checkpointed every 5 s), 10k keepalives/s; the same range run during the hold"
start b
$R bench hold-leases --endpoints $ep --leases 100000 --streams 100 --conns 10 --clients 100 --ttl 30 --hold 30s --no-revoke --json >$work/b.json 2>$work/b.err &
b=$!; pids+=($b)
until grep -q holding $work/b.err; do sleep 0.05; done
c0=$(awk '{print $14+$15}' /proc/$pid/stat)
$R bench range --endpoints $ep --load-keys 1000 --consistency s --rate 200 --clients 4 --duration 20s --json | summ
wait $b
c1=$(awk '{print $14+$15}' /proc/$pid/stat)
summ <$work/b.json
echo "  server CPU over the range run and the rest of the hold: $(( (c1-c0) )) ticks"
kill -9 $pid
echo "C. Roster holding 16,667 leases of TTL 5 s (not checkpointed: TTL not above the 5 s interval), also 10k keepalives/s"
start c
$R bench hold-leases --endpoints $ep --leases 16667 --streams 100 --conns 10 --clients 100 --ttl 5 --hold 30s --no-revoke --json >$work/c.json 2>$work/c.err &
cb=$!; pids+=($cb)
until grep -q holding $work/c.err; do sleep 0.05; done
c0=$(awk '{print $14+$15}' /proc/$pid/stat)
t0=$(date +%s%N)
until grep -q "hold over" $work/c.err; do sleep 0.02; done
c1=$(awk '{print $14+$15}' /proc/$pid/stat)
t1=$(date +%s%N)
wait $cb
summ <$work/c.json
python3 -c "import json; r=json.load(open('$work/c.json')); cpu=($c1-$c0)/100; w=($t1-$t0)/1e9; print(f'  server CPU in the hold: {cpu/w:.3f} cores, {cpu*1e6/(r[\"rps\"]*w):.1f} µs per keepalive')"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
cat $work/roster.log | grep -v "ready to serve" || true
