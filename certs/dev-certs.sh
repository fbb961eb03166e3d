#!/usr/bin/env bash
# Makes a local development CA and a server certificate signed by it, for running the gate on
# this machine. Nothing here is for production: use certificates from your own CA or cert-manager.
#
#   certs/dev-certs.sh [OUT_DIR] [EXTRA_DNS_NAME ...]
#
# Writes OUT_DIR/ca.crt, ca.key, server.crt (leaf + CA chain), server.key. Defaults: OUT_DIR=certs/dev,
# names localhost, 127.0.0.1, ::1 and *.gate.localhost. Existing files are kept unless FORCE=1.
set -euo pipefail

out=${1:-"$(dirname "$0")/dev"}
shift || true
mkdir -p "$out"
cd "$out"

if [[ -f server.crt && -f server.key && "${FORCE:-0}" != 1 ]]; then
  echo "dev certificates already in $(pwd) (FORCE=1 to remake)"
  exit 0
fi

umask 077
san="DNS:localhost,DNS:*.gate.localhost,IP:127.0.0.1,IP:::1"
for name in "$@"; do san="$san,DNS:$name"; done

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=synapse-gate development CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout ca.key -out ca.crt 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 397 \
  -extfile <(printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$san") \
  -out server.leaf.crt 2>/dev/null
cat server.leaf.crt ca.crt > server.crt
rm -f server.csr server.leaf.crt ca.srl
chmod 644 ca.crt server.crt

echo "wrote $(pwd)/{ca.crt,ca.key,server.crt,server.key}; trust ca.crt in clients (REQUESTS_CA_BUNDLE=$(pwd)/ca.crt)"
