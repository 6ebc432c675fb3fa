#!/usr/bin/env bash
# bench/pair.sh: two builds of the sidecar side by side, for a change to the
# hot path. In each round A, B and nginx take the same max load in turn (A
# and B swap places every other round) on the pinned server core (the
# upstream beside them), and the line printed
# is each one's throughput and its CPU per request, user and system, read
# from /proc/PID/stat over the measured load, with the host's steal on that
# core. Paired rounds are what this noisy 2-core VM allows: compare A and B
# round by round and quote medians (docs/benchmarks.md).
#
# Usage:
#   go build -o /tmp/a ./cmd/sidecar        # the build before the change
#   go build -o /tmp/b ./cmd/sidecar        # the build after it
#   bench/pair.sh [--proto h1|h2c] [--upstream-protocol auto|http1|http2]
#                 [--rounds N] [--duration S] /tmp/a /tmp/b
#
# --upstream-protocol http1 with --proto h2c is h2c in, HTTP/1.1 out, as
# nginx's h2c port does (bench/run.sh's watertight-h1up); the default, auto,
# follows the app.
#
# Needs what bench/run.sh installs (fortio, h2load, nginx, taskset); run
# bench/run.sh --quick once first on a fresh machine.
set -euo pipefail

cd "$(dirname "$0")/.."
PROTO=h1 ROUNDS=6 DURATION=3 UPSTREAM_PROTOCOL=auto
while (($# > 2)); do
	case $1 in
	--proto) PROTO=$2; shift ;;
	--upstream-protocol) UPSTREAM_PROTOCOL=$2; shift ;;
	--rounds) ROUNDS=$2; shift ;;
	--duration) DURATION=$2; shift ;;
	*) echo "unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
(($# == 2)) || { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;$d' >&2; exit 2; }
[[ $PROTO == h1 || $PROTO == h2c ]] || { echo "--proto: '$PROTO' is neither h1 nor h2c" >&2; exit 2; }
case $UPSTREAM_PROTOCOL in auto | http1 | http2) ;; *) echo "--upstream-protocol: '$UPSTREAM_PROTOCOL' is none of auto, http1, http2" >&2; exit 2 ;; esac
A=$(realpath "$1") B=$(realpath "$2")

BASE=${BENCH_PORT_BASE:-18180}
UP=$BASE PA=$((BASE + 1)) PB=$((BASE + 3)) NG=$((BASE + 5)) NG2=$((BASE + 6))
DIR=bench/out/pair
mkdir -p "$DIR"
go build -o "$DIR/upstream" ./bench/upstream

for side in a:$PA b:$PB; do
	cat >"$DIR/${side%%:*}.yaml" <<EOF
admin: {address: 127.0.0.1:$((${side#*:} + 1))}
budget: 4096
listeners:
  - {name: upstream-mode, address: 127.0.0.1:${side#*:}, mode: upstream, upstream: bench}
upstreams:
  - name: bench
    protocol: $UPSTREAM_PROTOCOL
    endpoints: [127.0.0.1:$UP]
EOF
done
# The same nginx as bench/run.sh's.
# shellcheck source=bench/nginx-conf.sh
source bench/nginx-conf.sh
write_nginx_conf "$DIR/nginx.conf" "$PWD/$DIR/nginx" "$UP" "$NG" "$NG2"

PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
start() { # name port command...
	local name=$1 port=$2 i
	shift 2
	taskset -c 1 "$@" >"$DIR/$name.log" 2>&1 &
	PIDS+=($!)
	for i in $(seq 50); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "$name did not listen on $port; see $DIR/$name.log" >&2
	exit 1
}
start upstream "$UP" "$DIR/upstream" -addr "127.0.0.1:$UP" -size 64
start A "$PA" "$A" run --config "$DIR/a.yaml" --log-level warn
start B "$PB" "$B" run --config "$DIR/b.yaml" --log-level warn
start nginx "$NG" "$(command -v nginx || echo /usr/sbin/nginx)" -p "$DIR/nginx/" -e stderr -c "$PWD/$DIR/nginx.conf"
declare -A PID=([A]=${PIDS[1]} [B]=${PIDS[2]} [nginx]=${PIDS[3]})
declare -A PORT=([A]=$PA [B]=$PB [nginx]=$NG)
[[ $PROTO == h2c ]] && PORT[nginx]=$NG2

# load NAME: one max-load measurement; prints "requests qps".
load() {
	local url=http://127.0.0.1:${PORT[$1]}/
	if [[ $PROTO == h1 ]]; then
		taskset -c 0 fortio load -qps 0 -c 32 -t "${DURATION}s" -json "$DIR/load.json" "$url" >/dev/null 2>&1
		jq -r '"\(.DurationHistogram.Count) \(.ActualQPS)"' "$DIR/load.json"
	else
		taskset -c 0 h2load -c 32 -m 1 -D "$DURATION" "$url" >"$DIR/load.txt" 2>&1
		awk '/^requests:/{n=$8} /^finished in/{gsub(",","",$4); q=$4} END{print n, q}' "$DIR/load.txt"
	fi
}
cpu() { cut -d' ' -f14,15 "/proc/$1/stat"; }      # user and system ticks
steal() { awk '/^cpu1 /{print $9}' /proc/stat; } # the server core's

printf 'round target      req/s  user µs/req  sys µs/req  total µs/req  steal ticks\n'
for r in $(seq "$ROUNDS"); do
	# A and B swap places every round: the slot a build runs in moves it by
	# about 2 % on this host, which is as much as many changes measured here.
	order="A B nginx"
	((r % 2 == 0)) && order="B A nginx"
	for t in $order; do
		load "$t" >/dev/null # warm: connections open, pools full
		read -r u0 s0 < <(cpu "${PID[$t]}")
		st0=$(steal)
		read -r n q < <(load "$t")
		read -r u1 s1 < <(cpu "${PID[$t]}")
		st1=$(steal)
		tick=$(getconf CLK_TCK)
		awk -v r="$r" -v t="$t" -v n="$n" -v q="$q" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v st=$((st1 - st0)) -v hz="$tick" \
			'BEGIN{f=1e6/hz/n; printf "%5d %-6s %10.0f %12.1f %11.1f %13.1f %12d\n", r, t, q, u*f, s*f, (u+s)*f, st}'
	done
done
