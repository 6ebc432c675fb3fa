#!/usr/bin/env bash
# bench/run.sh: the whole-process benchmark. In one run on this machine it
# measures the same tiny upstream reached
#   direct             (no proxy: the baseline for added latency),
#   watertight         (the sidecar, listener mode "upstream"),
#   watertight-proxy   (the sidecar, listener mode "proxy", routed by Host),
#   revproxy           (a bare net/http/httputil.ReverseProxy: the floor any Go proxy pays),
#   haproxy            (Debian's HAProxy package: the bar to close on),
# with standard load tools (fortio, h2load), over HTTP/1.1 and h2c, at max
# throughput and at a fixed rate. Every measurement is repeated and the
# report quotes medians and ratios taken inside the same run.
#
# Usage (from the repo root):
#   bench/run.sh                 full run: 3 repetitions of 10 s per measurement (~15 min)
#   bench/run.sh --quick         1 repetition of 3 s (~2 min), to check the harness works
#   bench/run.sh --profile       CPU and allocation profiles of the sidecar and of the
#                                bare ReverseProxy under max load (bench/out/profile/)
# Options: --reps N, --duration SECONDS, --only SCENARIO[,SCENARIO...]
# Environment: BENCH_PORT_BASE (default 18080), BENCH_LOAD_CPUS (default 0),
#              BENCH_SERVER_CPUS (default 1)
#
# Outputs (bench/out/, gitignored): runs/ (raw tool outputs and manifest.tsv),
# logs/, results.md (the tables), results.json, results.csv, meta.json.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/bench/out
RUNS=$OUT/runs
LOGS=$OUT/logs
COMMAND_LINE="bench/run.sh${*:+ $*}"

# --- Settings: identical for every target ---------------------------------
MODE=bench          # bench | profile
REPS=3
DURATION=10         # seconds per measurement
CONNS=32            # client connections (HTTP/1.1 and h2c with one stream each)
MUX_CONNS=4         # h2c multiplexed: connections ...
MUX_STREAMS=8       # ... times concurrent streams each (= 32 in flight, like CONNS)
RATE=2000           # req/s for the fixed-rate latency scenarios
PAYLOAD=64          # response body bytes
ONLY=""
FORTIO_VERSION=v1.68.2  # the newest whose dependencies the Go module proxy serves
PORT_BASE=${BENCH_PORT_BASE:-18080}
LOAD_CPUS=${BENCH_LOAD_CPUS:-0}
SERVER_CPUS=${BENCH_SERVER_CPUS:-1}

PORT_UPSTREAM=$PORT_BASE
PORT_WATERTIGHT=$((PORT_BASE + 1))
PORT_REVPROXY=$((PORT_BASE + 2))
PORT_HAPROXY=$((PORT_BASE + 3))
PORT_WATERTIGHT_PROXY=$((PORT_BASE + 4))
PORT_ADMIN=$((PORT_BASE + 5))
PORT_PPROF_WATERTIGHT=$((PORT_BASE + 10))
PORT_PPROF_REVPROXY=$((PORT_BASE + 11))

TARGETS=(direct watertight watertight-proxy revproxy haproxy)

# Scenarios: name|kind|description. kind "max" = throughput with no rate
# limit, "rate" = latency at a fixed rate.
SCENARIOS=(
	"h1-max|max|HTTP/1.1 keep-alive, max throughput (fortio -qps 0 -c $CONNS)"
	"h2c-max|max|h2c, max throughput, one stream per connection (h2load -c $CONNS -m 1)"
	"h2c-mux-max|max|h2c multiplexed, max throughput (h2load -c $MUX_CONNS -m $MUX_STREAMS)"
	"h1-rate|rate|HTTP/1.1 keep-alive at $RATE req/s (fortio -qps $RATE -uniform -c $CONNS)"
	"h2c-rate|rate|h2c at $RATE req/s (fortio -h2 -qps $RATE -uniform -c $CONNS)"
)

PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

parse_args() {
	while (($#)); do
		case $1 in
		--quick) REPS=1 DURATION=3 ;;
		--profile) MODE=profile ;;
		--reps) REPS=$2; shift ;;
		--duration) DURATION=$2; shift ;;
		--only) ONLY=$2; shift ;;
		-h | --help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
		*) die "unknown argument $1 (try --help)" ;;
		esac
		shift
	done
}

# Pinning: on a 2-core box everything shares the CPU. The load generator gets
# one core and the server side (the proxy under test and the upstream) the
# other, so a proxy's cost shows up as lost throughput on its own core
# instead of being hidden by (or stealing from) the load generator. Pinned
# to one CPU, Go sets GOMAXPROCS=1; HAProxy gets nbthread 1 to match.
setup_pinning() {
	LOAD_PIN=()
	SERVER_PIN=()
	if command -v taskset >/dev/null && (($(nproc) >= 2)); then
		LOAD_PIN=(taskset -c "$LOAD_CPUS")
		SERVER_PIN=(taskset -c "$SERVER_CPUS")
		log "pinning: load generator on CPU $LOAD_CPUS, proxies and upstream on CPU $SERVER_CPUS"
	else
		log "warning: no taskset or fewer than 2 CPUs: running unpinned"
	fi
}

# Tools: HAProxy and h2load from Debian, fortio from the Go module proxy.
# Installed only when missing, so a second run starts at once.
ensure_tools() {
	local missing=()
	command -v haproxy >/dev/null || missing+=(haproxy)
	command -v h2load >/dev/null || missing+=(nghttp2-client)
	command -v curl >/dev/null || missing+=(curl)
	command -v taskset >/dev/null || missing+=(util-linux)
	if ((${#missing[@]})); then
		log "installing ${missing[*]} with apt-get"
		local sudo=()
		((EUID == 0)) || sudo=(sudo)
		"${sudo[@]}" apt-get update -qq
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
	FORTIO=$(go env GOPATH)/bin/fortio
	if ! [[ -x $FORTIO ]] || ! "$FORTIO" version 2>/dev/null | grep -q "${FORTIO_VERSION#v}"; then
		log "installing fortio $FORTIO_VERSION with go install"
		(cd / && go install "fortio.org/fortio@$FORTIO_VERSION")
	fi
}

# Build the sidecar and the helpers. The Go programs are built, not `go run`,
# so compiling never overlaps a measurement.
build() {
	mkdir -p "$OUT" "$LOGS"
	# A hash of the Go sources the sidecar is built from (tests and bench/
	# excluded), so results can be matched to code even in a dirty tree.
	SOURCE_HASH=$(find . -name '*.go' -not -name '*_test.go' -not -path './bench/*' -print0 |
		LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
	GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo +dirty)"
	log "building the sidecar and the helpers into bench/out/"
	go build -o "$OUT/sidecar" ./cmd/sidecar
	go build -o "$OUT/upstream" ./bench/upstream
	go build -o "$OUT/revproxy" ./bench/revproxy
	go build -o "$OUT/report" ./bench/report
	if [[ $MODE == profile ]]; then
		go build -o "$OUT/sidecar-pprof" ./bench/sidecar-pprof
	fi
}

# Configs for the proxies, generated so they always match the ports above.
write_configs() {
	# Watertight: one upstream, reached from a mode-upstream listener and from
	# a mode-proxy listener (Host: bench). The budget is large enough that the
	# bulkhead never refuses; protocol auto follows the app (h1 in → h1 out,
	# h2c in → h2c out), as the bare ReverseProxy and HAProxy do here.
	cat >"$OUT/watertight.yaml" <<EOF
admin: {address: 127.0.0.1:$PORT_ADMIN}
budget: 4096
listeners:
  - {name: upstream-mode, address: 127.0.0.1:$PORT_WATERTIGHT, mode: upstream, upstream: bench}
  - {name: proxy-mode, address: 127.0.0.1:$PORT_WATERTIGHT_PROXY, mode: proxy}
upstreams:
  - name: bench
    hosts: [bench]
    protocol: auto
    endpoints: [127.0.0.1:$PORT_UPSTREAM]
EOF
	# HAProxy 2.6 (Debian 12): a clear-text HTTP bind speaks HTTP/1.1 and
	# switches to HTTP/2 when a client opens with the h2 preface (prior
	# knowledge), so one port serves both like the Go proxies. fc_http_major
	# picks the backend so the upstream protocol follows the client's.
	# No request logging (the Go proxies log none either).
	cat >"$OUT/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always
frontend bench
    bind 127.0.0.1:$PORT_HAPROXY
    use_backend upstream_h2c if { fc_http_major 2 }
    default_backend upstream_h1
backend upstream_h1
    server up 127.0.0.1:$PORT_UPSTREAM
backend upstream_h2c
    server up 127.0.0.1:$PORT_UPSTREAM proto h2
EOF
	haproxy -c -q -f "$OUT/haproxy.cfg" || die "HAProxy rejected bench/out/haproxy.cfg"
}

cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
}

# start NAME PORT COMMAND...: run a server pinned to the server CPUs and wait
# until it accepts connections.
start() {
	local name=$1 port=$2
	shift 2
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		die "port $port (for $name) is already in use; set BENCH_PORT_BASE to move the ports"
	fi
	"${SERVER_PIN[@]}" "$@" >"$LOGS/$name.log" 2>&1 &
	PIDS+=($!)
	local i
	for i in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
		kill -0 "${PIDS[-1]}" 2>/dev/null || die "$name exited; see bench/out/logs/$name.log"
		sleep 0.1
	done
	die "$name did not listen on $port; see bench/out/logs/$name.log"
}

start_servers() {
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	start upstream "$PORT_UPSTREAM" "$OUT/upstream" -addr "127.0.0.1:$PORT_UPSTREAM" -size "$PAYLOAD"
	if [[ $MODE == profile ]]; then
		start watertight "$PORT_WATERTIGHT" "$OUT/sidecar-pprof" -config "$OUT/watertight.yaml" \
			-pprof "127.0.0.1:$PORT_PPROF_WATERTIGHT"
		start revproxy "$PORT_REVPROXY" "$OUT/revproxy" -addr "127.0.0.1:$PORT_REVPROXY" \
			-upstream "127.0.0.1:$PORT_UPSTREAM" -pprof "127.0.0.1:$PORT_PPROF_REVPROXY"
		return
	fi
	start watertight "$PORT_WATERTIGHT" "$OUT/sidecar" run --config "$OUT/watertight.yaml" --log-level warn
	start revproxy "$PORT_REVPROXY" "$OUT/revproxy" -addr "127.0.0.1:$PORT_REVPROXY" -upstream "127.0.0.1:$PORT_UPSTREAM"
	start haproxy "$PORT_HAPROXY" haproxy -db -f "$OUT/haproxy.cfg"
}

target_port() {
	case $1 in
	direct) echo "$PORT_UPSTREAM" ;;
	watertight) echo "$PORT_WATERTIGHT" ;;
	watertight-proxy) echo "$PORT_WATERTIGHT_PROXY" ;;
	revproxy) echo "$PORT_REVPROXY" ;;
	haproxy) echo "$PORT_HAPROXY" ;;
	esac
}

# Only mode proxy routes by Host; everyone else gets the default authority.
target_host() { [[ $1 == watertight-proxy ]] && echo bench || true; }

# Check every target answers over both protocols and reaches the upstream
# with the client's protocol (the upstream's /_proto echoes it), so that no
# proxy is quietly measured downgrading h2c to HTTP/1.1.
sanity_check() {
	local t url host got
	for t in "${TARGETS[@]}"; do
		url=http://127.0.0.1:$(target_port "$t")/_proto
		host=$(target_host "$t")
		got=$(curl -sS ${host:+-H "Host: $host"} "$url")
		[[ $got == HTTP/1.1 ]] || die "$t over HTTP/1.1 reached the upstream as '$got'"
		got=$(curl -sS --http2-prior-knowledge ${host:+-H "Host: $host"} "$url")
		[[ $got == HTTP/2.0 ]] || die "$t over h2c reached the upstream as '$got'"
	done
	log "sanity check: every target passes HTTP/1.1 as HTTP/1.1 and h2c as h2c"
}

# The load commands. Same flags for every target; only the URL (and the
# Host for mode proxy) differ.
#   fortio: -r 0.00001 = 10 µs histogram resolution (the default 1 ms is
#   coarser than what we measure); -allow-initial-errors so a 503 does not
#   stop the run (errors are counted in the report instead).
fortio_cmd() { # TARGET SECONDS QPS OUTFILE [fortio flags...]
	local t=$1 secs=$2 qps=$3 out=$4
	shift 4
	local host
	host=$(target_host "$t")
	FORTIO_ARGS=(load -quiet -allow-initial-errors -r 0.00001 -p "50,90,99,99.9"
		-c "$CONNS" -qps "$qps" -t "${secs}s" -json "$out" "$@"
		${host:+-H "Host: $host"} "http://127.0.0.1:$(target_port "$t")/")
}

#   h2load: h2c with prior knowledge for http:// URLs; -m streams per
#   connection; --warm-up-time lets connections settle before counting.
h2load_cmd() { # TARGET SECONDS CONNS STREAMS
	local t=$1 secs=$2 c=$3 m=$4 host
	host=$(target_host "$t")
	H2LOAD_ARGS=(-c "$c" -m "$m" -D "$secs" --warm-up-time=1 ${host:+-H ":authority: $host"}
		"http://127.0.0.1:$(target_port "$t")/")
}

# run_one SCENARIO KIND DESC TARGET REP: one measurement, recorded in the manifest.
run_one() {
	local sc=$1 kind=$2 desc=$3 t=$4 rep=$5 base file tool
	base=$sc.$t.$rep
	case $sc in
	h1-max) tool=fortio; fortio_cmd "$t" "$DURATION" 0 "$RUNS/$base.json" ;;
	h1-rate) tool=fortio; fortio_cmd "$t" "$DURATION" "$RATE" "$RUNS/$base.json" -uniform ;;
	h2c-rate) tool=fortio; fortio_cmd "$t" "$DURATION" "$RATE" "$RUNS/$base.json" -uniform -h2 ;;
	h2c-max) tool=h2load; h2load_cmd "$t" "$DURATION" "$CONNS" 1 ;;
	h2c-mux-max) tool=h2load; h2load_cmd "$t" "$DURATION" "$MUX_CONNS" "$MUX_STREAMS" ;;
	*) die "unknown scenario $sc" ;;
	esac
	noise_start
	if [[ $tool == fortio ]]; then
		file=$base.json
		"${LOAD_PIN[@]}" "$FORTIO" "${FORTIO_ARGS[@]}" >"$RUNS/$base.log" 2>&1 ||
			log "warning: fortio failed for $base (see bench/out/runs/$base.log)"
	else
		file=$base.txt
		"${LOAD_PIN[@]}" h2load "${H2LOAD_ARGS[@]}" >"$RUNS/$file" 2>&1 ||
			log "warning: h2load failed for $base (see bench/out/runs/$file)"
	fi
	local noise
	noise=$(noise_end)
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$kind" "$desc" "$t" "$rep" "$tool" "$file" "$noise" >>"$RUNS/manifest.tsv"
	log "  $sc rep $rep $t: $(summary_line "$tool" "$RUNS/$file")${noise:+ (others used $noise% of the server core)}"
}

# The noise meter. Other processes on the box (builds, tests) steal CPU from
# the server core at random; nothing here can stop that, but it can be
# measured: the CPU time the server core spent on user and system work,
# minus what our pinned servers used, is someone else's. It is recorded per
# measurement so that the report can show how noisy each one was.
# (irq/softirq time is left out: loopback traffic of our own is counted there.)
core_busy_total() { # prints "busy total" jiffies of the server core
	awk -v c="cpu$SERVER_CPUS" '$1 == c { print $2 + $3 + $4 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat
}

servers_jiffies() { # utime + stime of every server we started
	local pid sum=0 f
	for pid in "${PIDS[@]}"; do
		f=$(cut -d')' -f2 "/proc/$pid/stat" 2>/dev/null) || continue
		sum=$((sum + $(awk '{ print $12 + $13 }' <<<"$f")))
	done
	echo "$sum"
}

noise_start() {
	NOISE_OK=0
	[[ ${#SERVER_PIN[@]} -gt 0 && $SERVER_CPUS =~ ^[0-9]+$ ]] || return 0
	read -r NOISE_BUSY NOISE_TOTAL < <(core_busy_total)
	NOISE_SERVERS=$(servers_jiffies)
	NOISE_OK=1
}

noise_end() { # prints the foreign share of the server core, in percent
	if ((NOISE_OK == 0)); then
		echo ""
		return
	fi
	local busy total servers
	read -r busy total < <(core_busy_total)
	servers=$(servers_jiffies)
	awk -v b=$((busy - NOISE_BUSY)) -v t=$((total - NOISE_TOTAL)) -v s=$((servers - NOISE_SERVERS)) \
		'BEGIN { f = t > 0 ? 100 * (b - s) / t : 0; if (f < 0) f = 0; printf "%.1f", f }'
}

# summary_line TOOL FILE: a short progress line, so a long run shows life.
summary_line() {
	if [[ $1 == fortio ]]; then
		grep -o '"ActualQPS": [0-9.]*' "$2" 2>/dev/null | awk '{printf "%.0f req/s", $2}' || true
	else
		grep -o 'finished in [^,]*, [0-9.]* req/s' "$2" 2>/dev/null | sed 's/.*, //' || true
	fi
}

# A short load on every target first: connection pools fill, the Go heaps
# grow to their working size and HAProxy's buffers are allocated, so the
# first measured target is not penalised for being first.
warm_up() {
	log "warming up every target"
	local t
	for t in "${TARGETS[@]}"; do
		fortio_cmd "$t" 2 0 /dev/null
		"${LOAD_PIN[@]}" "$FORTIO" "${FORTIO_ARGS[@]}" >/dev/null 2>&1 || true
		h2load_cmd "$t" 2 "$CONNS" 1
		"${LOAD_PIN[@]}" h2load "${H2LOAD_ARGS[@]}" >/dev/null 2>&1 || true
	done
}

# Repetitions are interleaved: each repetition runs every target back to back
# (in a rotated order, so no target is always first or last), and ratios are
# taken inside a repetition. Background noise then hits all targets alike.
run_scenarios() {
	rm -rf "$RUNS"
	mkdir -p "$RUNS"
	local entry sc kind desc rep i n=${#TARGETS[@]}
	for entry in "${SCENARIOS[@]}"; do
		IFS='|' read -r sc kind desc <<<"$entry"
		if [[ -n $ONLY && ,$ONLY, != *,$sc,* ]]; then
			continue
		fi
		log "scenario $sc: $desc"
		for ((rep = 1; rep <= REPS; rep++)); do
			for ((i = 0; i < n; i++)); do
				run_one "$sc" "$kind" "$desc" "${TARGETS[(i + rep - 1) % n]}" "$rep"
				sleep 1 # let sockets in TIME_WAIT and GC settle between targets
			done
		done
	done
}

write_meta() { # PHASE: start | end
	if [[ $1 == start ]]; then
		LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
		START_TIME=$(date -u +%FT%TZ)
		return
	fi
	cat >"$OUT/meta.json" <<EOF
{
  "command": "$COMMAND_LINE",
  "started": "$START_TIME",
  "finished": "$(date -u +%FT%TZ)",
  "host_cpus": $(nproc),
  "cpu_model": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')",
  "kernel": "$(uname -r)",
  "go": "$(go env GOVERSION)",
  "haproxy": "$(haproxy -v | head -1 | cut -d' ' -f3)",
  "h2load": "$(h2load --version | cut -d/ -f2)",
  "fortio": "$FORTIO_VERSION",
  "git_revision": "$GIT_REV",
  "source_sha256": "$SOURCE_HASH",
  "loadavg_start": "$LOAD_START",
  "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "reps": $REPS, "duration_s": $DURATION, "connections": $CONNS,
  "mux_connections": $MUX_CONNS, "mux_streams": $MUX_STREAMS,
  "rate_rps": $RATE, "payload_bytes": $PAYLOAD,
  "load_cpus": "${LOAD_PIN[*]:-unpinned}", "server_cpus": "${SERVER_PIN[*]:-unpinned}"
}
EOF
}

report() {
	log "results (medians of $REPS; also in bench/out/results.md, .json, .csv):"
	"$OUT/report" -runs "$RUNS" -out "$OUT" -meta "$OUT/meta.json"
}

# --profile: load one proxy at max throughput while pprof samples it, for
# the sidecar (the real request path: sidecar.Run plus a pprof port) and the
# bare ReverseProxy side by side. CPU profile over the load; allocations as
# the difference of two allocs snapshots around it.
profile_one() { # NAME TARGET PPROF_PORT PROTO
	local name=$1 t=$2 pport=$3 proto=$4 dir=$OUT/profile secs=$((DURATION + 10))
	local stem=$dir/$name-$proto
	curl -sS -o "$stem.allocs.before.pprof" "http://127.0.0.1:$pport/debug/pprof/allocs"
	if [[ $proto == h1 ]]; then
		fortio_cmd "$t" "$secs" 0 "$stem.load.json"
		"${LOAD_PIN[@]}" "$FORTIO" "${FORTIO_ARGS[@]}" >"$stem.load.log" 2>&1 &
	else
		h2load_cmd "$t" "$secs" "$CONNS" 1
		"${LOAD_PIN[@]}" h2load "${H2LOAD_ARGS[@]}" >"$stem.load.txt" 2>&1 &
	fi
	local load=$!
	sleep 2 # past the load generator's warm-up
	curl -sS -o "$stem.cpu.pprof" "http://127.0.0.1:$pport/debug/pprof/profile?seconds=$DURATION"
	wait "$load" || true
	curl -sS -o "$stem.allocs.after.pprof" "http://127.0.0.1:$pport/debug/pprof/allocs"
	{
		echo "# go tool pprof -top $stem.cpu.pprof"
		go tool pprof -top -nodecount=45 "$stem.cpu.pprof" 2>/dev/null
		echo
		echo "# go tool pprof -top -cum"
		go tool pprof -top -cum -nodecount=60 "$stem.cpu.pprof" 2>/dev/null
	} >"$stem.cpu.txt"
	{
		echo "# allocations during the load (allocs after minus before)"
		go tool pprof -top -sample_index=alloc_objects -nodecount=40 \
			-base "$stem.allocs.before.pprof" "$stem.allocs.after.pprof" 2>/dev/null
		echo
		go tool pprof -top -sample_index=alloc_space -nodecount=30 \
			-base "$stem.allocs.before.pprof" "$stem.allocs.after.pprof" 2>/dev/null
	} >"$stem.allocs.txt"
	log "  $name $proto: $stem.cpu.txt, $stem.allocs.txt"
}

run_profiles() {
	mkdir -p "$OUT/profile"
	echo "source_sha256 $SOURCE_HASH git $GIT_REV" >"$OUT/profile/source.txt"
	log "profiling under max load (${DURATION}s of CPU profile each)"
	profile_one watertight watertight "$PORT_PPROF_WATERTIGHT" h1
	profile_one watertight watertight "$PORT_PPROF_WATERTIGHT" h2c
	profile_one revproxy revproxy "$PORT_PPROF_REVPROXY" h1
	profile_one revproxy revproxy "$PORT_PPROF_REVPROXY" h2c
}

main() {
	parse_args "$@"
	command -v go >/dev/null || die "go is not on PATH"
	ensure_tools # first: it may install taskset
	setup_pinning
	build
	write_configs
	write_meta start
	if [[ $MODE == profile ]]; then
		TARGETS=(direct watertight revproxy)
		start_servers
		run_profiles
		return
	fi
	start_servers
	sanity_check
	warm_up
	run_scenarios
	write_meta end
	report
}

main "$@"
