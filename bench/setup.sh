# Sourced by bench/run and bench/instructions: the pinned tools, the release build, and the parts
# both measure against: the Synapse-like upstream and issuer (bench/fixture.rs), the nginx and
# HAProxy configurations and the hyper-hop command the gate is compared with, `ready` and
# `new_run_dir`. Expects LOAD_CORE; sets work, pids, upstream, upstream_port, issuer, token,
# hyper_hop, gate_glibc_tunables and oha, and stops what it started on exit.
# shellcheck shell=bash

# Pinned tools: upstream releases of Debian packages (any Debian revision, see
# scripts/apt-install-pinned), oha from crates.io.
DEBIAN_TOOLS=("wrk=4.1.0-3" "nginx=1.22.1-9" "haproxy=2.6.12-1")
OHA_VERSION=1.16.0
missing=()
command -v wrk >/dev/null || missing+=("${DEBIAN_TOOLS[0]}")
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=("${DEBIAN_TOOLS[1]}")
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=("${DEBIAN_TOOLS[2]}")
for tool in ${EXTRA_DEBIAN_TOOLS[@]+"${EXTRA_DEBIAN_TOOLS[@]}"}; do  # EXTRA_DEBIAN_TOOLS: the caller's own
  command -v "${tool%%=*}" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  scripts/apt-install-pinned "${missing[@]}"
fi
oha=bench/.tools/bin/oha
if [[ ! -x $oha ]] || [[ "$($oha --version)" != "oha $OHA_VERSION" ]]; then
  echo "installing oha $OHA_VERSION (cargo install, a few minutes once)"
  cargo install --quiet --locked --version "$OHA_VERSION" --root bench/.tools oha
fi
cargo build --release --quiet --bin synapse-gate --example bench_fixture --example bench_hyper_hop

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

taskset -c "$LOAD_CORE" target/release/examples/bench_fixture "$work" >"$work/fixture.json" &
pids+=($!)
for _ in $(seq 100); do [[ -s "$work/fixture.json" ]] && break; sleep 0.1; done
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/fixture.json" "$1"; }
upstream=$(field upstream)
upstream_port=$(field upstream_port)
issuer=$(field issuer)
token=$(cat "$work/token")

# --- the proxies' configurations --------------------------------------------------------------
# The gate runs with the allocator setting its container image ships (Dockerfile's ENV).
gate_glibc_tunables=$(sed -n 's/.*GLIBC_TUNABLES=\([^ \\]*\).*/\1/p' Dockerfile)
[[ -n $gate_glibc_tunables ]] || { echo "no GLIBC_TUNABLES in the Dockerfile"; exit 1; }
# The gate's protocol stack without its logic (bench/hyper_hop.rs), on port 18446.
hyper_hop=(target/release/examples/bench_hyper_hop 127.0.0.1:18446 "$work/server.pem"
  "$work/server.key" "$work/ca.pem" "$upstream" /ws/contoso)
mkdir -p "$work/nginx/logs"
cat >"$work/nginx.conf" <<EOF
# A bare TLS reverse-proxy hop: no authentication, pooled TLS connections to the upstream.
user root;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 16384; }
http {
  access_log $work/nginx/access.log combined buffer=64k flush=1s;
  upstream synapse { server 127.0.0.1:$upstream_port; keepalive 64; }
  server {
    listen 127.0.0.1:18444 ssl http2;
    ssl_certificate $work/server.pem;
    ssl_certificate_key $work/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    location /ws/contoso/ {
      proxy_pass https://synapse/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_server_name on;
      proxy_ssl_name localhost;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $work/ca.pem;
      proxy_ssl_session_reuse on;
    }
  }
}
EOF
cat >"$work/haproxy.cfg" <<EOF
# HAProxy checking the caller's JWT itself (jwt_verify: RS256 signature, iss, aud, exp) and
# sending a fixed Authorization upstream: the closest a stock proxy gets to the gate's job.
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:18445 ssl crt $work/haproxy.pem alpn h2,http/1.1
  http-request deny status 401 unless { req.hdr(authorization) -m beg "Bearer " }
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny status 401 unless { var(txn.alg) -m str RS256 }
  http-request deny status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$work/pubkey.pem") -m int 1 }
  http-request deny status 401 unless { var(txn.bearer),jwt_payload_query('\$.iss') -m str $issuer }
  http-request deny status 401 unless { var(txn.bearer),jwt_payload_query('\$.aud') -m str api://synapse-gate }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request set-header Authorization "Bearer fixed-workload-token"
  default_backend synapse
backend synapse
  http-reuse always
  server s1 127.0.0.1:$upstream_port ssl verify required ca-file $work/ca.pem sni str(localhost) verifyhost localhost
EOF

ready() { # url [attempts]: wait until it answers 200 with the token, 0.05 s apart (default 10 s)
  for _ in $(seq "${2:-200}"); do
    [[ "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$1")" == 200 ]] && return 0
    sleep 0.05
  done
  echo "$1 never answered 200"; cat "$work"/nginx/error.log 2>/dev/null | tail -5; return 1
}
new_run_dir() { # [suffix]: a fresh results folder, named by the time, as an absolute path
  local dir
  dir="bench/results/$(date -u +%Y%m%dT%H%M%SZ)${1:-}"
  mkdir -p "$dir"
  realpath "$dir"
}
