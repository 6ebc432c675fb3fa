# bench/nginx-conf.sh: sourced by bench/run.sh and bench/pair.sh, so that
# both measure the same nginx.
#
# write_nginx_conf FILE DIR UPSTREAM_PORT H1_PORT H2C_PORT [H2UP_PORT] writes
# FILE: nginx 1.22 (Debian 12), one process (master_process off: the
# measured pid is the one serving, and one worker matches the pinning), in
# the foreground, its files under DIR (absolute). A cleartext `listen ...
# http2` in nginx before 1.25 speaks only HTTP/2 with prior knowledge, so
# HTTP/1.1 and h2c get a port each. proxy_pass speaks HTTP/1.x only: h2c
# clients on H2C_PORT reach the upstream over HTTP/1.1 keep-alive.
# H2UP_PORT (run.sh's nginx-h2up) is the same process passing h2c on as h2c:
# grpc_pass is nginx's only HTTP/2 upstream, made for gRPC, and it forwards
# any HTTP/2 request (the upstream's /_proto answers HTTP/2.0), one request
# per upstream connection at a time, kept alive, as proxy_pass does. It has
# an upstream block of its own: nginx keeps one idle-connection cache per
# block, and a cache shared by both protocols hands HTTP/1.1 connections
# to grpc_pass ("no connection data found for keepalive http2 connection")
# and h2 ones to proxy_pass, failing requests of both.
write_nginx_conf() {
	local file=$1 dir=$2 upstream=$3 h1=$4 h2c=$5 h2up=${6:-}
	mkdir -p "$dir/logs"
	cat >"$file" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
$(upstream_block bench "$upstream")
    server {
        listen 127.0.0.1:$h1;
        listen 127.0.0.1:$h2c http2;
        http2_max_concurrent_streams 4096;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
	if [[ -n $h2up ]]; then
		cat >>"$file" <<EOF
$(upstream_block bench_h2 "$upstream")
    server {
        listen 127.0.0.1:$h2up http2;
        http2_max_concurrent_streams 4096;
        location / {
            grpc_pass grpc://bench_h2;
        }
    }
EOF
	fi
	echo "}" >>"$file"
}

# upstream_block NAME PORT: the upstream on loopback, its connections kept
# alive for as long as a run lasts.
upstream_block() {
	cat <<EOF
    upstream $1 {
        server 127.0.0.1:$2;
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
EOF
}
