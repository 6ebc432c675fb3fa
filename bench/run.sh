#!/usr/bin/env bash
# bench/run.sh: the whole-process benchmark. In one run on this machine it
# measures, side by side and as ratios taken inside the same run:
#
#  1. Overhead: the same tiny upstream reached
#       direct             (no proxy: the baseline for added latency),
#       watertight         (the sidecar, listener mode "upstream"),
#       revproxy           (a bare net/http/httputil.ReverseProxy: the floor any Go proxy pays),
#       caddy              (Caddy's reverse_proxy, installed with go install),
#       haproxy            (Debian's HAProxy),
#       nginx              (Debian's nginx, one worker),
#       [watertight-proxy] (the sidecar, listener mode "proxy"; with --targets)
#       [watertight-h1conn], [watertight-nethttp]
#                          (the sidecar with --upstream-http1 watertight or net/http:
#                           its two HTTP/1.1 clients, whatever the default; with --targets)
#       [watertight-h1serve], [watertight-netserve]
#                          (the sidecar with --downstream-http1 watertight, its own
#                           app-side HTTP/1.1 loop, proxy/h1serve (the default), or
#                           net/http: every app connection to net/http's server; with --targets)
#       [watertight-neth2]  (the sidecar with --downstream-http2 net/http
#                           --upstream-http2 net/http: net/http's HTTP/2 server and
#                           client instead of proxy/h2serve and proxy/h2conn, the
#                           defaults; with --targets)
#       [watertight-h1up]  (the sidecar with its upstream set to protocol http1:
#                           h2c in, HTTP/1.1 out, what nginx does, for a like-for-like
#                           h2c row against it; with --targets)
#       [watertight-h2cap] (the sidecar with its upstream's http2.maxConcurrentStreams
#                           at 4: h2c streams spread over connections, 4 at most on
#                           each, as nginx (one a connection) and HAProxy (one
#                           connection a client) spread them; with --targets)
#       [nginx-h2up]       (the same nginx process passing h2c on as h2c, through
#                           grpc_pass; h2c rows only; with --targets)
#       [watertight-sysmon] (an experiment, never shipped: the sidecar built with
#                           go build -overlay against a copy of runtime/proc.go
#                           whose monitor thread (sysmon) sleeps 1 ms at least,
#                           not 20 µs: what the runtime's monitor costs; with --targets)
#       [gofloor-raw], [gofloor-std], [gofloor-srv], [gofloor-rp]
#                          (bench/gofloor: the least a Go HTTP/1.1 proxy does, bytes only,
#                           through net/http's wire code, then net/http's server and
#                           ReverseProxy over the sidecar's client; HTTP/1.1 only; with --targets)
#       [gofloor-h2c]      (bench/gofloor -mode h2c: the least a Go proxy does for h2c
#                           clients and an HTTP/1.1 upstream, bytes only, the row nginx's
#                           h2c port is measured on; h2c rows only; with --targets)
#     with fortio and h2load over HTTP/1.1 keep-alive and h2c: max throughput,
#     p50/p90/p99 at 500 and 2000 req/s, CPU seconds per 1000 requests of the
#     proxy process and its peak RSS; and gRPC unary calls (fortio -grpc, gRPC's
#     health check, to a real gRPC server in the upstream) at max and at 2000/s.
#  2. Isolation: three upstreams, one of which hangs midway while the load
#     stays constant, behind Watertight (per-upstream compartments and one
#     shared pool), HAProxy (per-server maxconn + timeout queue) and the bare
#     ReverseProxy, driven by bench/isolation (an app with a fixed worker pool).
#     Over HTTP/1.1 keep-alive by default; with --iso-proto also (or only)
#     over h2c with prior knowledge, the app's calls multiplexed on few
#     connections as a gRPC app's are (h2c in, h2c out at every target).
#  3. Weights: a 50 ms and a 500 ms upstream behind weighted vs equal pools of
#     the same budget.
# Every measurement is repeated (interleaved, rotated order) and the reports
# quote medians. Pictures go to docs/img/.
#
# Usage (from the repo root, or `make bench`):
#   bench/run.sh                 full run: 3 repetitions of everything (~45 min on 2 cores)
#   bench/run.sh --quick         1 repetition, short runs (~6 min), to check the harness works
#   bench/run.sh --profile       CPU and allocation profiles of the sidecar and of the
#                                bare ReverseProxy under max load (bench/out/profile/)
# Options: --reps N, --duration SECONDS (overhead), --iso-duration SECONDS,
#          --only SCENARIO[,SCENARIO...], --parts overhead,isolation,weights,
#          --targets T[,T...] (overhead targets), --no-img (leave docs/img alone),
#          --iso-proto h1|h2c|h1,h2c (the isolation part's app protocols; default h1),
#          --shared-upstream (one upstream process for every overhead measurement,
#          as before run 58; by default each gets a fresh one: see fresh_upstream)
# Environment: BENCH_PORT_BASE (default 18080), BENCH_LOAD_CPUS (default 0),
#              BENCH_SERVER_CPUS (default 1), CADDY_VERSIONS (tried in order),
#              BENCH_SIDECAR_ENV (VAR=value pairs for the sidecar under test, e.g. GOGC=200)
#
# Outputs (bench/out/, gitignored): runs/ (raw tool outputs and manifest.tsv),
# iso-runs/ (one JSON per isolation/weights run), logs/, results.md (overhead
# tables), isolation.md, results.json, results.csv, meta.json; SVGs in docs/img/.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=bench/nginx-conf.sh
source "$ROOT/bench/nginx-conf.sh"
OUT=$ROOT/bench/out
RUNS=$OUT/runs
LOGS=$OUT/logs
COMMAND_LINE="bench/run.sh${*:+ $*}"

# --- Settings: identical for every target ---------------------------------
MODE=bench          # bench | profile
REPS=3
DURATION=8          # seconds per overhead measurement
CONNS=32            # client connections (HTTP/1.1 and h2c with one stream each)
MUX_CONNS=4         # h2c multiplexed: connections ...
MUX_STREAMS=8       # ... times concurrent streams each (= 32 in flight, like CONNS)
PAYLOAD=64          # response body bytes
ONLY=""
PARTS=overhead,isolation,weights
IMG=1               # write the pictures into docs/img/
FRESH_UPSTREAM=1    # a fresh upstream process for each overhead measurement (fresh_upstream)
FORTIO_VERSION=v1.68.2  # the newest whose dependencies the Go module proxy serves
# Caddy: newest first; the first that the Go module proxy serves is used. See
# docs/benchmarks.md for what the proxy here allowed.
CADDY_VERSIONS=${CADDY_VERSIONS:-v2.11.9 v2.10.2 v2.9.1 v2.8.4}
PORT_BASE=${BENCH_PORT_BASE:-18080}
LOAD_CPUS=${BENCH_LOAD_CPUS:-0}
SERVER_CPUS=${BENCH_SERVER_CPUS:-1}

PORT_UPSTREAM=$PORT_BASE
PORT_WATERTIGHT=$((PORT_BASE + 1))
PORT_REVPROXY=$((PORT_BASE + 2))
PORT_HAPROXY=$((PORT_BASE + 3))
PORT_WATERTIGHT_PROXY=$((PORT_BASE + 4))
PORT_ADMIN=$((PORT_BASE + 5))
PORT_NGINX=$((PORT_BASE + 6))     # HTTP/1.1
PORT_NGINX_H2C=$((PORT_BASE + 7)) # h2c prior knowledge (nginx 1.22 cannot serve both on one cleartext port)
PORT_CADDY=$((PORT_BASE + 8))
PORT_NGINX_H2UP=$((PORT_BASE + 9)) # the same nginx: h2c in, h2c out (grpc_pass), for nginx-h2up
PORT_PPROF_WATERTIGHT=$((PORT_BASE + 10))
PORT_PPROF_REVPROXY=$((PORT_BASE + 11))
PORT_WT_H1CONN=$((PORT_BASE + 12))  # +0 listener, +1 admin
PORT_WT_NETHTTP=$((PORT_BASE + 14)) # +0 listener, +1 admin
PORT_WT_H1SERVE=$((PORT_BASE + 20)) # +0 listener, +1 admin
PORT_WT_NETSERVE=$((PORT_BASE + 22)) # +0 listener, +1 admin
PORT_WT_NETH2=$((PORT_BASE + 24))    # +0 listener, +1 admin
PORT_WT_SYSMON=$((PORT_BASE + 26))   # +0 listener, +1 admin
PORT_WT_H1UP=$((PORT_BASE + 28))     # +0 listener, +1 admin
PORT_WT_H2CAP=$((PORT_BASE + 30))    # +0 listener, +1 admin
PORT_GOFLOOR_RAW=$((PORT_BASE + 16))
PORT_GOFLOOR_STD=$((PORT_BASE + 17))
PORT_GOFLOOR_SRV=$((PORT_BASE + 18))
PORT_GOFLOOR_RP=$((PORT_BASE + 19))
PORT_GOFLOOR_H2C=$((PORT_BASE + 32))
# Isolation and weights experiments.
PORT_ISO_UP=$((PORT_BASE + 120))     # +0 +1 +2: upstreams a, b, c
PORT_ISO_WT=$((PORT_BASE + 130))     # +0..+2 listeners, +3 admin
PORT_ISO_WTS=$((PORT_BASE + 140))    # the same, isolation: shared
PORT_ISO_HAP=$((PORT_BASE + 150))    # +0..+2
PORT_ISO_RP=$((PORT_BASE + 160))     # +0..+2, one bare ReverseProxy each
PORT_W_UP=$((PORT_BASE + 170))       # +0 fast, +1 slow
PORT_W_WEIGHTED=$((PORT_BASE + 180)) # +0 +1 listeners, +2 admin
PORT_W_EQUAL=$((PORT_BASE + 185))    # +0 +1 listeners, +2 admin

TARGETS=(direct watertight revproxy caddy haproxy nginx)

# Scenarios: name|kind|description. kind "max" = throughput with no rate
# limit, "rate" = latency at a fixed rate.
SCENARIOS=(
	"h1-max|max|HTTP/1.1 keep-alive, max throughput (fortio -qps 0 -c $CONNS)"
	"h2c-max|max|h2c, max throughput, one stream per connection (h2load -c $CONNS -m 1)"
	"h1-rate500|rate|HTTP/1.1 keep-alive at 500 req/s (fortio -qps 500 -uniform -c $CONNS)"
	"h1-rate2000|rate|HTTP/1.1 keep-alive at 2000 req/s (fortio -qps 2000 -uniform -c $CONNS)"
	"h2c-rate500|rate|h2c at 500 req/s (fortio -h2 -qps 500 -uniform -c $CONNS)"
	"h2c-rate2000|rate|h2c at 2000 req/s (fortio -h2 -qps 2000 -uniform -c $CONNS)"
	"h2c-mux-max|max|h2c multiplexed, max throughput (h2load -c $MUX_CONNS -m $MUX_STREAMS)"
	"grpc-max|max|gRPC unary calls, max throughput (fortio -grpc -qps 0 -c $CONNS)"
	"grpc-rate500|rate|gRPC unary calls at 500/s (fortio -grpc -qps 500 -uniform -c $CONNS)"
	"grpc-rate2000|rate|gRPC unary calls at 2000/s (fortio -grpc -qps 2000 -uniform -c $CONNS)"
)

# Isolation settings (see docs/benchmarks.md for why these numbers).
ISO_DURATION=20     # seconds per run
ISO_SLOW_AT=5       # upstream c hangs from here to the end
ISO_RATE=300        # calls/s in total, 100 per upstream
ISO_WORKERS=60      # the app's worker pool
ISO_DELAY=10ms      # healthy upstreams' answer time
ISO_TIMEOUT=500ms   # the proxies' upstream timeout
ISO_BUDGET=30       # Watertight budget: by weight 2:2:1 = 12, 12, 6; or 30 shared
ISO_WEIGHTS=(2 2 1) # a, b, c: c is the weak dependency (recommendations-like)
ISO_MAXCONN=(12 12 6) # HAProxy per-server maxconn = Watertight's per-upstream limits
ISO_QUEUE=50ms      # HAProxy timeout queue
ISO_CLIENT_TIMEOUT=1s
ISO_TARGET=100ms    # a healthy call succeeds when answered 200 within this
ISO_TARGETS=(watertight watertight-shared haproxy revproxy)
ISO_PROTOS=(h1)     # the app's protocols, one set of isolation runs each (--iso-proto)
# Weights settings.
W_DURATION=15
W_RATE=80           # 40/s to each upstream
W_BUDGET=30         # weighted 1:5 -> 5 and 25; equal -> 15 and 15

PIDS=()
declare -A PID_OF # server name -> pid (taskset execs the server, so $! is the server)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

parse_args() {
	while (($#)); do
		case $1 in
		--quick) REPS=1 DURATION=3 ISO_DURATION=12 ISO_SLOW_AT=4 W_DURATION=8 ;;
		--profile) MODE=profile ;;
		--reps) REPS=$2; shift ;;
		--duration) DURATION=$2; shift ;;
		--iso-duration) ISO_DURATION=$2; shift ;;
		--only) ONLY=$2; shift ;;
		--parts) PARTS=$2; shift ;;
		--targets) IFS=, read -r -a TARGETS <<<"$2"; shift ;;
		--iso-proto) IFS=, read -r -a ISO_PROTOS <<<"$2"; shift ;;
		--no-img) IMG=0 ;;
		--shared-upstream) FRESH_UPSTREAM=0 ;;
		-h | --help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
		*) die "unknown argument $1 (try --help)" ;;
		esac
		shift
	done
	local p
	for p in "${ISO_PROTOS[@]}"; do
		[[ $p == h1 || $p == h2c ]] || die "--iso-proto: '$p' is neither h1 nor h2c"
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

# Tools: HAProxy, nginx and h2load from Debian; fortio and Caddy from the Go
# module proxy. Installed only when missing, so a second run starts at once.
ensure_tools() {
	local missing=()
	command -v haproxy >/dev/null || missing+=(haproxy)
	command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
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
	NGINX=$(command -v nginx || echo /usr/sbin/nginx)
	local gobin
	gobin=$(go env GOBIN)
	gobin=${gobin:-$(go env GOPATH)/bin}
	FORTIO=$gobin/fortio
	if ! [[ -x $FORTIO ]] || ! "$FORTIO" version 2>/dev/null | grep -q "${FORTIO_VERSION#v}"; then
		log "installing fortio $FORTIO_VERSION with go install"
		(cd / && go install "fortio.org/fortio@$FORTIO_VERSION")
	fi
	ensure_caddy "$gobin"
}

# Caddy: the newest version in CADDY_VERSIONS that the module proxy serves.
# `caddy version` of a go-installed binary says "unknown", so the version
# that was installed is remembered next to it.
ensure_caddy() {
	local gobin=$1 v
	CADDY=$gobin/caddy
	CADDY_VERSION=$(cat "$gobin/caddy.version" 2>/dev/null || true)
	if [[ -x $CADDY && -n $CADDY_VERSION ]]; then
		return
	fi
	if [[ -x $CADDY ]] && [[ -z $CADDY_VERSION ]]; then
		CADDY_VERSION=unknown
		return
	fi
	mkdir -p "$LOGS"
	for v in $CADDY_VERSIONS; do
		log "installing caddy $v with go install (a few minutes)"
		if (cd / && go install "github.com/caddyserver/caddy/v2/cmd/caddy@$v") >"$LOGS/caddy-install-$v.log" 2>&1; then
			CADDY_VERSION=$v
			echo "$v" >"$gobin/caddy.version"
			return
		fi
		log "caddy $v did not install: $(grep -m1 '403' "$LOGS/caddy-install-$v.log" || tail -1 "$LOGS/caddy-install-$v.log")"
	done
	log "warning: no Caddy version installed; continuing without caddy (see bench/out/logs/caddy-install-*.log)"
	CADDY=""
	CADDY_VERSION=none
	local t kept=()
	for t in "${TARGETS[@]}"; do
		[[ $t == caddy ]] || kept+=("$t")
	done
	TARGETS=("${kept[@]}")
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
	go build -o "$OUT/gofloor" ./bench/gofloor
	go build -o "$OUT/report" ./bench/report
	go build -o "$OUT/isolation" ./bench/isolation
	if [[ $MODE == profile ]]; then
		go build -o "$OUT/sidecar-pprof" ./bench/sidecar-pprof
	fi
	if has_target watertight-sysmon; then
		build_sysmon_experiment
	fi
}

# watertight-sysmon: the sidecar built against a runtime whose monitor
# thread starts its sleeps at 1 ms instead of 20 µs (the two `delay = 20`
# of runtime.sysmon). Under load it wakes every 20 µs and takes the P from
# any goroutine in a syscall for longer, which a loopback write on a shared
# core often is; each wake is a context switch on the proxy's core. The
# tick is hardcoded (golang/go#18236), so this is a measurement of what it
# costs, not a setting to ship. The patched copy goes in with go build
# -overlay; the whole standard library is rebuilt once (about 3 minutes),
# then cached.
build_sysmon_experiment() {
	local src dir=$OUT/_sysmon # "_": go vet ./... and go build ./... skip it
	src=$(go env GOROOT)/src/runtime/proc.go
	mkdir -p "$dir"
	sed -e 's|^\(\t*\)delay = 20$|\1delay = 1000 // bench/run.sh: watertight-sysmon|' "$src" >"$dir/proc.go"
	[[ $(grep -c 'bench/run.sh: watertight-sysmon' "$dir/proc.go") == 2 ]] ||
		die "$src has changed: the watertight-sysmon patch no longer applies"
	printf '{"Replace":{"%s":"%s"}}\n' "$src" "$dir/proc.go" >"$dir/overlay.json"
	log "building watertight-sysmon (the standard library again, once)"
	go build -overlay "$dir/overlay.json" -o "$OUT/sidecar-sysmon" ./cmd/sidecar
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
	# The same sidecar, one per HTTP/1.1 client (watertight-h1conn,
	# watertight-nethttp): its own ports, the same upstream.
	local port
	local protocol http2
	for port in "$PORT_WT_H1CONN" "$PORT_WT_NETHTTP" "$PORT_WT_H1SERVE" "$PORT_WT_NETSERVE" "$PORT_WT_NETH2" "$PORT_WT_SYSMON" "$PORT_WT_H1UP" "$PORT_WT_H2CAP"; do
		protocol=auto http2=""
		[[ $port == "$PORT_WT_H1UP" ]] && protocol=http1 # watertight-h1up: h2c in, HTTP/1.1 out, as nginx
		[[ $port == "$PORT_WT_H2CAP" ]] && http2="
    http2: {maxConcurrentStreams: 4}" # watertight-h2cap
		cat >"$OUT/watertight-$port.yaml" <<EOF
admin: {address: 127.0.0.1:$((port + 1))}
budget: 4096
listeners:
  - {name: upstream-mode, address: 127.0.0.1:$port, mode: upstream, upstream: bench}
upstreams:
  - name: bench
    protocol: $protocol$http2
    endpoints: [127.0.0.1:$PORT_UPSTREAM]
EOF
	done
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

	# nginx: bench/nginx-conf.sh says how it is set up.
	write_nginx_conf "$OUT/nginx.conf" "$OUT/nginx" "$PORT_UPSTREAM" "$PORT_NGINX" "$PORT_NGINX_H2C" "$PORT_NGINX_H2UP"
	"$NGINX" -t -q -p "$OUT/nginx/" -e stderr -c "$OUT/nginx.conf" || die "nginx rejected bench/out/nginx.conf"

	# Caddy: reverse_proxy, h1 and h2c on one cleartext port (servers
	# protocols h1 h2c), the upstream protocol following the client's like
	# the others (a protocol matcher picks an h2c transport for HTTP/2
	# clients). No admin endpoint, no automatic HTTPS, no access log.
	mkdir -p "$OUT/caddy"
	cat >"$OUT/Caddyfile" <<EOF
{
	admin off
	auto_https off
	persist_config off
	servers {
		protocols h1 h2c
	}
}
http://127.0.0.1:$PORT_CADDY {
	@h2 protocol http/2
	handle @h2 {
		reverse_proxy 127.0.0.1:$PORT_UPSTREAM {
			transport http {
				versions h2c
			}
		}
	}
	handle {
		reverse_proxy 127.0.0.1:$PORT_UPSTREAM
	}
}
EOF
	write_isolation_configs
}

# The isolation experiment's proxies: three upstreams a, b, c, each on its
# own listener port (mode upstream), the same limits everywhere: 12, 12 and 6
# concurrent (Watertight: budget 30 by weight 2:2:1; HAProxy: per-server
# maxconn), nothing queued beyond that except HAProxy's bounded `timeout
# queue`, and a 500 ms upstream timeout.
# The h2c variants (*-h2c.*) differ only in protocol and use the same ports
# (the protocols run one after the other): the sidecar's upstreams say
# `protocol: auto` (h2c in, h2c out, as a gRPC app's sidecar would be set
# up); HAProxy binds `proto h2` (prior knowledge) and speaks `proto h2` to
# the servers, with the same per-server maxconn and timeout queue.
write_isolation_configs() {
	local u i wt="" wts="" hap="" hap2="" ups="" ups2="" names=(a b c)
	for i in 0 1 2; do
		u=${names[i]}
		wt+="  - {name: $u, address: 127.0.0.1:$((PORT_ISO_WT + i)), mode: upstream, upstream: $u}"$'\n'
		wts+="  - {name: $u, address: 127.0.0.1:$((PORT_ISO_WTS + i)), mode: upstream, upstream: $u}"$'\n'
		ups+="  - {name: $u, protocol: http1, endpoints: [127.0.0.1:$((PORT_ISO_UP + i))], timeout: $ISO_TIMEOUT, bulkhead: {weight: ${ISO_WEIGHTS[i]}}}"$'\n'
		ups2+="  - {name: $u, protocol: auto, endpoints: [127.0.0.1:$((PORT_ISO_UP + i))], timeout: $ISO_TIMEOUT, bulkhead: {weight: ${ISO_WEIGHTS[i]}}}"$'\n'
		hap+="frontend f_$u"$'\n'"    bind 127.0.0.1:$((PORT_ISO_HAP + i))"$'\n'"    default_backend b_$u"$'\n'
		hap+="backend b_$u"$'\n'"    server $u 127.0.0.1:$((PORT_ISO_UP + i)) maxconn ${ISO_MAXCONN[i]}"$'\n'
		hap2+="frontend f_$u"$'\n'"    bind 127.0.0.1:$((PORT_ISO_HAP + i)) proto h2"$'\n'"    default_backend b_$u"$'\n'
		hap2+="backend b_$u"$'\n'"    server $u 127.0.0.1:$((PORT_ISO_UP + i)) proto h2 maxconn ${ISO_MAXCONN[i]}"$'\n'
	done
	printf 'admin: {address: 127.0.0.1:%d}\nbudget: %d\nlisteners:\n%supstreams:\n%s' \
		$((PORT_ISO_WT + 3)) "$ISO_BUDGET" "$wt" "$ups" >"$OUT/iso-watertight.yaml"
	printf 'admin: {address: 127.0.0.1:%d}\nbudget: %d\nisolation: shared\nlisteners:\n%supstreams:\n%s' \
		$((PORT_ISO_WTS + 3)) "$ISO_BUDGET" "$wts" "$ups" >"$OUT/iso-watertight-shared.yaml"
	printf 'admin: {address: 127.0.0.1:%d}\nbudget: %d\nlisteners:\n%supstreams:\n%s' \
		$((PORT_ISO_WT + 3)) "$ISO_BUDGET" "$wt" "$ups2" >"$OUT/iso-watertight-h2c.yaml"
	printf 'admin: {address: 127.0.0.1:%d}\nbudget: %d\nisolation: shared\nlisteners:\n%supstreams:\n%s' \
		$((PORT_ISO_WTS + 3)) "$ISO_BUDGET" "$wts" "$ups2" >"$OUT/iso-watertight-shared-h2c.yaml"
	local proto sections
	for proto in h1 h2c; do
		[[ $proto == h1 ]] && sections=$hap || sections=$hap2
		cat >"$OUT/$(iso_file iso-haproxy "$proto" cfg)" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server $ISO_TIMEOUT
    timeout queue $ISO_QUEUE
    timeout http-keep-alive 60s
    http-reuse always
$sections
EOF
		haproxy -c -q -f "$OUT/$(iso_file iso-haproxy "$proto" cfg)" ||
			die "HAProxy rejected bench/out/$(iso_file iso-haproxy "$proto" cfg)"
	done
	# Weights: fast (50 ms) and slow (500 ms), budget 30, by weight 1:5
	# (5 and 25) or 1:1 (15 and 15). Timeouts 250 ms and 1 s.
	local name wf ws port
	for name in weighted equal; do
		if [[ $name == weighted ]]; then wf=1 ws=5 port=$PORT_W_WEIGHTED; else wf=1 ws=1 port=$PORT_W_EQUAL; fi
		cat >"$OUT/weights-$name.yaml" <<EOF
admin: {address: 127.0.0.1:$((port + 2))}
budget: $W_BUDGET
listeners:
  - {name: fast, address: 127.0.0.1:$port, mode: upstream, upstream: fast}
  - {name: slow, address: 127.0.0.1:$((port + 1)), mode: upstream, upstream: slow}
upstreams:
  - {name: fast, protocol: http1, endpoints: [127.0.0.1:$PORT_W_UP], timeout: 250ms, bulkhead: {weight: $wf}}
  - {name: slow, protocol: http1, endpoints: [127.0.0.1:$((PORT_W_UP + 1))], timeout: 1s, bulkhead: {weight: $ws}}
EOF
	done
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

# stop NAME...: end servers started with start (the isolation part stops
# the overhead servers first, so they do not share the core).
stop() {
	local name pid
	for name in "$@"; do
		pid=${PID_OF[$name]:-}
		[[ -n $pid ]] || continue
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		unset "PID_OF[$name]"
		local kept=() p
		for p in "${PIDS[@]}"; do
			[[ $p == "$pid" ]] || kept+=("$p")
		done
		PIDS=("${kept[@]}")
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
	PID_OF[$name]=$!
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
	# BENCH_SIDECAR_ENV (e.g. GOGC=200): environment for the sidecar under
	# test only, to measure runtime settings against the same baselines.
	# shellcheck disable=SC2086 # word splitting wanted: VAR=value pairs
	start watertight "$PORT_WATERTIGHT" env ${BENCH_SIDECAR_ENV:-} "$OUT/sidecar" run --config "$OUT/watertight.yaml" --log-level warn
	# The sidecar with each of its HTTP/1.1 clients, and with its own
	# app-side loop, when asked for.
	local t port flags
	local bin
	for t in watertight-h1conn watertight-nethttp watertight-h1serve watertight-netserve watertight-neth2 watertight-sysmon watertight-h1up watertight-h2cap; do
		has_target "$t" || continue
		port=$(target_port "$t")
		bin=$OUT/sidecar flags=()
		case $t in
		watertight-h1conn) flags=(--upstream-http1 watertight) ;;
		watertight-nethttp) flags=(--upstream-http1 net/http) ;;
		watertight-h1serve) flags=(--downstream-http1 watertight) ;;
		watertight-netserve) flags=(--downstream-http1 net/http) ;;
		watertight-neth2) flags=(--downstream-http2 net/http --upstream-http2 net/http) ;;
		watertight-sysmon) bin=$OUT/sidecar-sysmon ;;
		esac
		# shellcheck disable=SC2086
		start "$t" "$port" env ${BENCH_SIDECAR_ENV:-} "$bin" run \
			--config "$OUT/watertight-$port.yaml" --log-level warn "${flags[@]}"
	done
	start revproxy "$PORT_REVPROXY" "$OUT/revproxy" -addr "127.0.0.1:$PORT_REVPROXY" -upstream "127.0.0.1:$PORT_UPSTREAM"
	for t in gofloor-raw gofloor-std gofloor-srv gofloor-rp gofloor-h2c; do
		has_target "$t" || continue
		start "$t" "$(target_port "$t")" "$OUT/gofloor" -mode "${t#gofloor-}" \
			-addr "127.0.0.1:$(target_port "$t")" -upstream "127.0.0.1:$PORT_UPSTREAM"
	done
	start haproxy "$PORT_HAPROXY" haproxy -db -f "$OUT/haproxy.cfg"
	start nginx "$PORT_NGINX" "$NGINX" -p "$OUT/nginx/" -e stderr -c "$OUT/nginx.conf"
	if [[ -n $CADDY ]]; then
		start caddy "$PORT_CADDY" env XDG_DATA_HOME="$OUT/caddy" XDG_CONFIG_HOME="$OUT/caddy" \
			"$CADDY" run --config "$OUT/Caddyfile" --adapter caddyfile
	fi
}

has_target() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }

# The process whose CPU and memory a target costs: the proxy; for direct,
# the upstream itself (shown for scale, not as overhead).
target_pid() {
	case $1 in
	direct) echo "${PID_OF[upstream]}" ;;
	watertight-proxy) echo "${PID_OF[watertight]}" ;;
	nginx-h2up) echo "${PID_OF[nginx]}" ;;
	*) echo "${PID_OF[$1]}" ;;
	esac
}

target_port() { # TARGET [h1|h2]
	case $1 in
	direct) echo "$PORT_UPSTREAM" ;;
	watertight) echo "$PORT_WATERTIGHT" ;;
	watertight-proxy) echo "$PORT_WATERTIGHT_PROXY" ;;
	watertight-h1conn) echo "$PORT_WT_H1CONN" ;;
	watertight-nethttp) echo "$PORT_WT_NETHTTP" ;;
	watertight-h1serve) echo "$PORT_WT_H1SERVE" ;;
	watertight-netserve) echo "$PORT_WT_NETSERVE" ;;
	watertight-neth2) echo "$PORT_WT_NETH2" ;;
	watertight-sysmon) echo "$PORT_WT_SYSMON" ;;
	watertight-h1up) echo "$PORT_WT_H1UP" ;;
	watertight-h2cap) echo "$PORT_WT_H2CAP" ;;
	revproxy) echo "$PORT_REVPROXY" ;;
	gofloor-raw) echo "$PORT_GOFLOOR_RAW" ;;
	gofloor-std) echo "$PORT_GOFLOOR_STD" ;;
	gofloor-srv) echo "$PORT_GOFLOOR_SRV" ;;
	gofloor-rp) echo "$PORT_GOFLOOR_RP" ;;
	gofloor-h2c) echo "$PORT_GOFLOOR_H2C" ;;
	haproxy) echo "$PORT_HAPROXY" ;;
	caddy) echo "$PORT_CADDY" ;;
	nginx) if [[ ${2:-h1} == h2 ]]; then echo "$PORT_NGINX_H2C"; else echo "$PORT_NGINX"; fi ;;
	nginx-h2up) if [[ ${2:-h1} == h2 ]]; then echo "$PORT_NGINX_H2UP"; else echo "$PORT_NGINX"; fi ;;
	esac
}

# The gofloor targets are measuring tools that speak HTTP/1.1 only, but for
# gofloor-h2c, which speaks h2c only.
h1_only() { [[ $1 == gofloor-* && $1 != gofloor-h2c ]]; }

# gofloor-h2c serves a connection's streams one at a time: the multiplexed
# row would measure that, not the floor.
no_mux() { [[ $1 == gofloor-h2c ]]; }

# nginx-h2up is nginx's h2c port with an HTTP/2 upstream; over HTTP/1.1 it
# would measure nginx's own row again.
h2c_only() { [[ $1 == nginx-h2up || $1 == gofloor-h2c ]]; }

# The targets that cannot carry a gRPC call: those that pass h2c on as
# HTTP/1.1 (nginx's proxy_pass, watertight-h1up: no trailers, and the
# upstream's gRPC server speaks HTTP/2 only), those that speak HTTP/1.1 only,
# and the sidecar's mode proxy, which routes by a Host that fortio's gRPC
# client does not let us set.
no_grpc() { [[ $1 == nginx || $1 == watertight-h1up || $1 == watertight-proxy || $1 == gofloor-* ]]; }

# Only mode proxy routes by Host; everyone else gets the default authority.
target_host() { [[ $1 == watertight-proxy ]] && echo bench || true; }

# Check every target answers over both protocols and reaches the upstream
# with the client's protocol (the upstream's /_proto echoes it), so that no
# proxy is quietly measured downgrading h2c to HTTP/1.1. The one exception
# is nginx's proxy_pass, which cannot proxy to an HTTP/2 upstream: it must
# pass h2c on as HTTP/1.1, and the tables say so; watertight-h1up does the
# same on purpose, to be compared with it. nginx-h2up (grpc_pass) passes
# h2c on as h2c.
sanity_check() {
	local t url host got want
	for t in "${TARGETS[@]}"; do
		host=$(target_host "$t")
		if ! h2c_only "$t"; then
			url=http://127.0.0.1:$(target_port "$t" h1)/_proto
			got=$(curl -sS ${host:+-H "Host: $host"} "$url")
			[[ $got == HTTP/1.1 ]] || die "$t over HTTP/1.1 reached the upstream as '$got'"
		fi
		h1_only "$t" && continue
		url=http://127.0.0.1:$(target_port "$t" h2)/_proto
		want=HTTP/2.0
		[[ $t == nginx || $t == watertight-h1up || $t == gofloor-h2c ]] && want=HTTP/1.1
		got=$(curl -sS --http2-prior-knowledge ${host:+-H "Host: $host"} "$url")
		[[ $got == "$want" ]] || die "$t over h2c reached the upstream as '$got' (want $want)"
		no_grpc "$t" && continue
		"$FORTIO" load -quiet -grpc -n 20 -c 1 -qps 0 -json "$OUT/grpc-check.json" "127.0.0.1:$(target_port "$t" h2)" >/dev/null 2>&1 || true
		grep -q '"SERVING": 20' "$OUT/grpc-check.json" 2>/dev/null ||
			die "$t did not carry 20 gRPC health checks to the upstream's gRPC server (fortio's answer: $OUT/grpc-check.json)"
	done
	log "sanity check: every target passes HTTP/1.1 as HTTP/1.1 and h2c as h2c (nginx and watertight-h1up: h2c in, HTTP/1.1 out; gofloor: HTTP/1.1 only, but gofloor-h2c: h2c in, HTTP/1.1 out, h2c only; nginx-h2up: h2c only), and gRPC calls where it can (all but nginx, watertight-h1up, watertight-proxy and gofloor)"
}

# The load commands. Same flags for every target; only the URL (and the
# Host for mode proxy) differ.
#   fortio: -r 0.00001 = 10 µs histogram resolution (the default 1 ms is
#   coarser than what we measure); -allow-initial-errors so a 503 does not
#   stop the run (errors are counted in the report instead).
#   fortio -grpc: unary health checks over h2c to HOST:PORT, one connection
#   for each of the -c callers, as the -h2 rows have.
fortio_cmd() { # TARGET SECONDS QPS OUTFILE [fortio flags...]
	local t=$1 secs=$2 qps=$3 out=$4 proto=h1
	shift 4
	[[ " $* " == *" -h2 "* ]] && proto=h2
	local host url
	host=$(target_host "$t")
	url=http://127.0.0.1:$(target_port "$t" "$proto")/
	if [[ " $* " == *" -grpc "* ]]; then
		url=127.0.0.1:$(target_port "$t" h2) host=""
	fi
	FORTIO_ARGS=(load -quiet -allow-initial-errors -r 0.00001 -p "50,90,99,99.9"
		-c "$CONNS" -qps "$qps" -t "${secs}s" -json "$out" "$@"
		${host:+-H "Host: $host"} "$url")
}

#   h2load: h2c with prior knowledge for http:// URLs; -m streams per
#   connection; --warm-up-time lets connections settle before counting.
h2load_cmd() { # TARGET SECONDS CONNS STREAMS
	local t=$1 secs=$2 c=$3 m=$4 host
	host=$(target_host "$t")
	H2LOAD_ARGS=(-c "$c" -m "$m" -D "$secs" --warm-up-time=1 ${host:+-H ":authority: $host"}
		"http://127.0.0.1:$(target_port "$t" h2)/")
}

# fresh_upstream TARGET SCENARIO: the upstream is started again, and the
# target warmed on it for a moment with the scenario's own load (discarded),
# so that every measurement meets an upstream that only its target has
# connected to. With one upstream for the whole run, what the earlier
# targets left there (above all nginx's kept connections, which it holds for
# minutes) changed what a request cost the next one: the sidecar's h2c p50
# at 2,000 req/s was 264-274 µs with nginx's idle connections open on the
# upstream and 277-292 without (docs/benchmarks.md, runs 53 and 54), and
# whether they were open depended on the order the targets ran in.
fresh_upstream() {
	local t=$1 sc=$2 secs=2
	stop upstream
	start upstream "$PORT_UPSTREAM" "$OUT/upstream" -addr "127.0.0.1:$PORT_UPSTREAM" -size "$PAYLOAD"
	case $sc in
	h1-max) fortio_cmd "$t" "$secs" 0 /dev/null ;;
	h1-rate*) fortio_cmd "$t" "$secs" "${sc#h1-rate}" /dev/null -uniform ;;
	h2c-rate*) fortio_cmd "$t" "$secs" "${sc#h2c-rate}" /dev/null -uniform -h2 ;;
	h2c-max) h2load_cmd "$t" "$secs" "$CONNS" 1 ;;
	h2c-mux-max) h2load_cmd "$t" "$secs" "$MUX_CONNS" "$MUX_STREAMS" ;;
	grpc-max) fortio_cmd "$t" "$secs" 0 /dev/null -grpc ;;
	grpc-rate*) fortio_cmd "$t" "$secs" "${sc#grpc-rate}" /dev/null -uniform -grpc ;;
	esac
	if [[ $sc == h2c-max || $sc == h2c-mux-max ]]; then
		"${LOAD_PIN[@]}" h2load "${H2LOAD_ARGS[@]}" >/dev/null 2>&1 || true
	else
		"${LOAD_PIN[@]}" "$FORTIO" "${FORTIO_ARGS[@]}" >/dev/null 2>&1 || true
	fi
}

# run_one SCENARIO KIND DESC TARGET REP: one measurement, recorded in the manifest.
run_one() {
	local sc=$1 kind=$2 desc=$3 t=$4 rep=$5 base file tool
	base=$sc.$t.$rep
	if ((FRESH_UPSTREAM)); then
		fresh_upstream "$t" "$sc"
	fi
	case $sc in
	h1-max) tool=fortio; fortio_cmd "$t" "$DURATION" 0 "$RUNS/$base.json" ;;
	h1-rate*) tool=fortio; fortio_cmd "$t" "$DURATION" "${sc#h1-rate}" "$RUNS/$base.json" -uniform ;;
	h2c-rate*) tool=fortio; fortio_cmd "$t" "$DURATION" "${sc#h2c-rate}" "$RUNS/$base.json" -uniform -h2 ;;
	h2c-max) tool=h2load; h2load_cmd "$t" "$DURATION" "$CONNS" 1 ;;
	h2c-mux-max) tool=h2load; h2load_cmd "$t" "$DURATION" "$MUX_CONNS" "$MUX_STREAMS" ;;
	grpc-max) tool=fortio; fortio_cmd "$t" "$DURATION" 0 "$RUNS/$base.json" -grpc ;;
	grpc-rate*) tool=fortio; fortio_cmd "$t" "$DURATION" "${sc#grpc-rate}" "$RUNS/$base.json" -uniform -grpc ;;
	*) die "unknown scenario $sc" ;;
	esac
	noise_start
	steal_start
	proc_start "$(target_pid "$t")"
	if [[ $tool == fortio ]]; then
		file=$base.json
		"${LOAD_PIN[@]}" "$FORTIO" "${FORTIO_ARGS[@]}" >"$RUNS/$base.log" 2>&1 ||
			log "warning: fortio failed for $base (see bench/out/runs/$base.log)"
	else
		file=$base.txt
		"${LOAD_PIN[@]}" h2load "${H2LOAD_ARGS[@]}" >"$RUNS/$file" 2>&1 ||
			log "warning: h2load failed for $base (see bench/out/runs/$file)"
	fi
	local noise cpu rss cs user steal_srv steal_load
	read -r cpu rss cs user < <(proc_end)
	noise=$(noise_end)
	read -r steal_srv steal_load < <(steal_end)
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$kind" "$desc" "$t" "$rep" "$tool" "$file" "$noise" "$cpu" "$rss" "$cs" \
		"$user" "$steal_srv" "$steal_load" >>"$RUNS/manifest.tsv"
	log "  $sc rep $rep $t: $(summary_line "$tool" "$RUNS/$file")${noise:+ (others used $noise% of the server core)}"
}

# The proxy process's cost per measurement: utime+stime from /proc/PID/stat
# before and after (CPU seconds; the report divides by the requests), the
# peak RSS during the measurement (VmHWM, reset before it by writing 5 to
# /proc/PID/clear_refs, which needs root or the same user), and the context
# switches of all its threads. The last show where a Go proxy's kernel time
# goes that a C proxy's does not: the runtime's scheduler threads (sysmon,
# Ms handed a P while another sits in a slow loopback write) switch on the
# same core as the work. A thread that exits mid-measurement is missed.
# The user part of the CPU is reported on its own too: it is the proxy's own
# code and runtime, while the system part (the loopback writes above all)
# swells with the hypervisor's steal (see steal_start).
CLK_TCK=$(getconf CLK_TCK)
proc_jiffies() { cut -d')' -f2 "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13, $12 }'; } # total, user
proc_switches() {
	cat "/proc/$1"/task/*/status 2>/dev/null | awk '/^(nonvoluntary|voluntary)_ctxt_switches:/ { s += $2 } END { print s + 0 }'
}
proc_start() {
	PROC_PID=$1
	read -r PROC_J0 PROC_U0 < <(proc_jiffies "$PROC_PID")
	PROC_CS0=$(proc_switches "$PROC_PID")
	echo 5 >"/proc/$PROC_PID/clear_refs" 2>/dev/null || true
}
proc_end() { # prints "cpu_seconds peak_rss_kb context_switches user_cpu_seconds"
	local j1 u1 hwm cs1
	read -r j1 u1 < <(proc_jiffies "$PROC_PID")
	cs1=$(proc_switches "$PROC_PID")
	hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$PROC_PID/status" 2>/dev/null)
	awk -v a="$PROC_J0" -v b="$j1" -v ua="$PROC_U0" -v ub="$u1" -v t="$CLK_TCK" -v h="${hwm:-0}" -v c=$((cs1 - PROC_CS0)) \
		'BEGIN { printf "%.2f %d %d %.2f\n", (b - a) / t, h, c, (ub - ua) / t }'
}

# The steal meter. This box is a virtual machine whose host takes CPU back
# at times (the steal column of /proc/stat): under load it was 30-45 % of
# both cores for minutes on end, and then every process's system time per
# request doubles and throughput halves, ours and the peers' alike; the
# noise meter, which counted it in with other processes' time, showed 0 %
# through it. Recorded per measurement, for the server core and the load
# generator's, so that a repetition taken in such a spell can be told from
# one that was not.
core_steal() { # CPU: prints "steal total" jiffies
	awk -v c="cpu$1" '$1 == c { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat
}
steal_start() {
	STEAL_OK=0
	[[ $SERVER_CPUS =~ ^[0-9]+$ && $LOAD_CPUS =~ ^[0-9]+$ ]] || return 0
	read -r STEAL_S0 STEAL_ST0 < <(core_steal "$SERVER_CPUS")
	read -r STEAL_L0 STEAL_LT0 < <(core_steal "$LOAD_CPUS")
	STEAL_OK=1
}
steal_end() { # prints "server_core_steal_pct load_core_steal_pct", or nothing
	((STEAL_OK)) || return 0
	local s st l lt
	read -r s st < <(core_steal "$SERVER_CPUS")
	read -r l lt < <(core_steal "$LOAD_CPUS")
	awk -v s=$((s - STEAL_S0)) -v st=$((st - STEAL_ST0)) -v l=$((l - STEAL_L0)) -v lt=$((lt - STEAL_LT0)) \
		'BEGIN { printf "%.1f %.1f\n", (st > 0 ? 100 * s / st : 0), (lt > 0 ? 100 * l / lt : 0) }'
}

# The noise meter. Other processes on the box (builds, tests) steal CPU from
# the server core at random; nothing here can stop that, but it can be
# measured: the CPU time the server core spent on user and system work,
# minus what our pinned servers used, is someone else's. It is recorded per
# measurement so that the report can show how noisy each one was.
# (irq/softirq time is left out: loopback traffic of our own is counted there;
# the host's steal too: the steal meter below reports it on its own.)
core_busy_total() { # prints "busy total" jiffies of the server core
	awk -v c="cpu$SERVER_CPUS" '$1 == c { print $2 + $3 + $4, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat
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
		fortio_cmd "$t" 1 0 /dev/null -h2
		"${LOAD_PIN[@]}" "$FORTIO" "${FORTIO_ARGS[@]}" >/dev/null 2>&1 || true
		h2load_cmd "$t" 2 "$CONNS" 1
		"${LOAD_PIN[@]}" h2load "${H2LOAD_ARGS[@]}" >/dev/null 2>&1 || true
		no_grpc "$t" && continue
		fortio_cmd "$t" 1 0 /dev/null -grpc
		"${LOAD_PIN[@]}" "$FORTIO" "${FORTIO_ARGS[@]}" >/dev/null 2>&1 || true
	done
}

# Repetitions are interleaved: each repetition runs every target back to back
# (in a rotated order, so no target is always first or last), and ratios are
# taken inside a repetition. Background noise then hits all targets alike.
run_scenarios() {
	rm -rf "$RUNS"
	mkdir -p "$RUNS"
	local entry sc kind desc rep i t n=${#TARGETS[@]}
	for entry in "${SCENARIOS[@]}"; do
		IFS='|' read -r sc kind desc <<<"$entry"
		if [[ -n $ONLY && ,$ONLY, != *,$sc,* ]]; then
			continue
		fi
		log "scenario $sc: $desc"
		for ((rep = 1; rep <= REPS; rep++)); do
			for ((i = 0; i < n; i++)); do
				t=${TARGETS[(i + rep - 1) % n]}
				case $sc in
				h2c-mux-*) h1_only "$t" || no_mux "$t" && continue ;;
				h2c-*) h1_only "$t" && continue ;;
				grpc-*) no_grpc "$t" && continue ;;
				*) h2c_only "$t" && continue ;;
				esac
				run_one "$sc" "$kind" "$desc" "$t" "$rep"
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
  "haproxy": "$(haproxy -v | sed -n 1p | cut -d' ' -f3)",
  "nginx": "$("$NGINX" -v 2>&1 | cut -d/ -f2)",
  "caddy": "$CADDY_VERSION",
  "parts": "$PARTS",
  "h2load": "$(h2load --version | cut -d/ -f2)",
  "fortio": "$FORTIO_VERSION",
  "git_revision": "$GIT_REV",
  "source_sha256": "$SOURCE_HASH",
  "loadavg_start": "$LOAD_START",
  "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "reps": $REPS, "duration_s": $DURATION, "connections": $CONNS,
  "mux_connections": $MUX_CONNS, "mux_streams": $MUX_STREAMS,
  "rates_rps": [500, 2000], "payload_bytes": $PAYLOAD,
  "targets": "${TARGETS[*]}",
  "load_cpus": "${LOAD_PIN[*]:-unpinned}", "server_cpus": "${SERVER_PIN[*]:-unpinned}"
}
EOF
}

report() {
	log "results (medians of $REPS; also in bench/out/results.md, .json, .csv):"
	local img=()
	((IMG)) && img=(-img "$ROOT/docs/img")
	"$OUT/report" -runs "$RUNS" -out "$OUT" -meta "$OUT/meta.json" "${img[@]}"
}

# --- Isolation and weights ---------------------------------------------------

# iso_file STEM PROTO EXT: a per-protocol file name. HTTP/1.1 keeps the
# names from before h2c (STEM.EXT), so old runs and configs still fit.
iso_file() {
	if [[ $2 == h1 ]]; then echo "$1.$3"; else echo "$1-$2.$3"; fi
}

# iso_load NAME CALLERS REP URLS PROTO: one run of the app model against a
# target. Results: isolation.CALLERS.NAME.REP.json for HTTP/1.1 (the names
# from before h2c), isolation.h2c.CALLERS.NAME.REP.json for h2c.
iso_load() {
	local name=$1 callers=$2 rep=$3 urls=$4 proto=$5
	local out=$OUT/iso-runs/isolation.$callers.$name.$rep.json
	[[ $proto == h1 ]] || out=$OUT/iso-runs/isolation.$proto.$callers.$name.$rep.json
	"${LOAD_PIN[@]}" "$OUT/isolation" load -experiment isolation -name "$name" -callers "$callers" -rep "$rep" \
		-proto "$proto" -urls "$urls" -upstream-names a,b,c -rate "$ISO_RATE" -workers "$ISO_WORKERS" \
		-duration "${ISO_DURATION}s" -slow 2 -slow-at "${ISO_SLOW_AT}s" \
		-control "http://127.0.0.1:$((PORT_ISO_UP + 2))/_control/slow" \
		-client-timeout "$ISO_CLIENT_TIMEOUT" -targets "$ISO_TARGET" -out "$out" 2>>"$LOGS/isolation-load.log" |
		while read -r line; do log "  rep $rep: $line"; done
}

iso_urls() { # BASEPORT
	echo "http://127.0.0.1:$1/,http://127.0.0.1:$(($1 + 1))/,http://127.0.0.1:$(($1 + 2))/"
}

iso_port() { # TARGET: the first of its three listener ports
	case $1 in
	watertight) echo "$PORT_ISO_WT" ;;
	watertight-shared) echo "$PORT_ISO_WTS" ;;
	haproxy) echo "$PORT_ISO_HAP" ;;
	revproxy) echo "$PORT_ISO_RP" ;;
	esac
}

# iso_sanity PROTO: every target answers each of a, b, c in the app's
# protocol and reaches the upstream in the same one (the upstreams'
# /_proto echoes it), so that no h2c run quietly measures HTTP/1.1 on
# either side of a proxy.
iso_sanity() {
	local proto=$1 t i got want=HTTP/1.1 curl_proto=()
	[[ $proto == h2c ]] && want=HTTP/2.0 curl_proto=(--http2-prior-knowledge)
	for t in "${ISO_TARGETS[@]}"; do
		for i in 0 1 2; do
			got=$(curl -sS "${curl_proto[@]}" "http://127.0.0.1:$(($(iso_port "$t") + i))/_proto")
			[[ $got == "$want" ]] || die "isolation $t over $proto reached upstream $i as '$got' (want $want)"
		done
	done
	log "isolation sanity check: every target passes $proto through as $want"
}

# run_isolation: the whole experiment once per app protocol (--iso-proto),
# the proxies restarted in between with that protocol's configs.
run_isolation() {
	local proto
	for proto in "${ISO_PROTOS[@]}"; do
		run_isolation_proto "$proto"
	done
}

run_isolation_proto() { # PROTO
	local proto=$1
	log "isolation over $proto: ${ISO_RATE} calls/s over a, b, c; c hangs from ${ISO_SLOW_AT}s of ${ISO_DURATION}s; ${ISO_WORKERS} app workers"
	start iso-upstreams "$((PORT_ISO_UP + 2))" "$OUT/isolation" upstreams \
		-addrs "127.0.0.1:$PORT_ISO_UP,127.0.0.1:$((PORT_ISO_UP + 1)),127.0.0.1:$((PORT_ISO_UP + 2))" \
		-delays "$ISO_DELAY,$ISO_DELAY,$ISO_DELAY"
	start iso-watertight "$PORT_ISO_WT" "$OUT/sidecar" run \
		--config "$OUT/$(iso_file iso-watertight "$proto" yaml)" --log-level error
	start iso-watertight-shared "$PORT_ISO_WTS" "$OUT/sidecar" run \
		--config "$OUT/$(iso_file iso-watertight-shared "$proto" yaml)" --log-level error
	start iso-haproxy "$PORT_ISO_HAP" haproxy -db -f "$OUT/$(iso_file iso-haproxy "$proto" cfg)"
	local i
	for i in 0 1 2; do
		# HTTP/1.1 and h2c on one port, the upstream protocol following
		# the client's: no flag needed for h2c.
		start "iso-revproxy-$i" "$((PORT_ISO_RP + i))" "$OUT/revproxy" -addr "127.0.0.1:$((PORT_ISO_RP + i))" \
			-upstream "127.0.0.1:$((PORT_ISO_UP + i))"
	done
	iso_sanity "$proto"
	local callers rep n=${#ISO_TARGETS[@]} t
	for callers in shared independent; do
		for ((rep = 1; rep <= REPS; rep++)); do
			for ((i = 0; i < n; i++)); do
				t=${ISO_TARGETS[(i + rep - 1) % n]}
				iso_load "$t" "$callers" "$rep" "$(iso_urls "$(iso_port "$t")")" "$proto"
				sleep 1
			done
		done
	done
	stop iso-watertight iso-watertight-shared iso-haproxy iso-revproxy-0 iso-revproxy-1 iso-revproxy-2 iso-upstreams
}

run_weights() {
	log "weights: fast (50 ms) and slow (500 ms) upstreams, ${W_RATE} calls/s, budget ${W_BUDGET}: weighted 1:5 vs equal"
	start w-upstreams "$((PORT_W_UP + 1))" "$OUT/isolation" upstreams \
		-addrs "127.0.0.1:$PORT_W_UP,127.0.0.1:$((PORT_W_UP + 1))" -delays 50ms,500ms
	start w-weighted "$PORT_W_WEIGHTED" "$OUT/sidecar" run --config "$OUT/weights-weighted.yaml" --log-level error
	start w-equal "$PORT_W_EQUAL" "$OUT/sidecar" run --config "$OUT/weights-equal.yaml" --log-level error
	local rep name port
	for ((rep = 1; rep <= REPS; rep++)); do
		for name in weighted equal; do
			[[ $name == weighted ]] && port=$PORT_W_WEIGHTED || port=$PORT_W_EQUAL
			"${LOAD_PIN[@]}" "$OUT/isolation" load -experiment weights -name "$name" -callers independent -rep "$rep" \
				-urls "http://127.0.0.1:$port/,http://127.0.0.1:$((port + 1))/" -upstream-names fast,slow \
				-rate "$W_RATE" -workers 400 -duration "${W_DURATION}s" -slow -1 \
				-client-timeout 2s -targets 250ms,1s -out "$OUT/iso-runs/weights.independent.$name.$rep.json" \
				2>>"$LOGS/isolation-load.log" | while read -r line; do log "  rep $rep: $line"; done
			sleep 1
		done
	done
	stop w-weighted w-equal w-upstreams
}

isolation_report() {
	local img=()
	((IMG)) && img=(-img "$ROOT/docs/img")
	log "isolation and weights (medians of $REPS; also in bench/out/isolation.md):"
	"$OUT/isolation" report -in "$OUT/iso-runs" -md "$OUT/isolation.md" "${img[@]}"
}

part() { [[ ,$PARTS, == *,$1,* ]]; }

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
	((IMG)) && mkdir -p "$ROOT/docs/img"
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	if part overhead; then
		start_servers
		sanity_check
		warm_up
		run_scenarios
		stop upstream watertight watertight-h1conn watertight-nethttp watertight-h1serve watertight-netserve watertight-neth2 watertight-sysmon watertight-h1up watertight-h2cap revproxy gofloor-raw gofloor-std gofloor-srv gofloor-rp gofloor-h2c haproxy nginx caddy
	fi
	if part isolation || part weights; then
		rm -rf "$OUT/iso-runs"
		mkdir -p "$OUT/iso-runs"
		part isolation && run_isolation
		part weights && run_weights
	fi
	write_meta end
	part overhead && report
	if part isolation || part weights; then
		isolation_report
	fi
}

main "$@"
