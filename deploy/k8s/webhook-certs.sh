#!/usr/bin/env bash
# Provision the injection webhook's TLS without cert-manager: a CA of its
# own, a serving certificate for the webhook Service's DNS names, the Secret
# the webhook mounts, and the caBundle the API server verifies it with.
#
#   deploy/k8s/webhook-certs.sh             # generate, create/replace the Secret, patch the caBundle
#   deploy/k8s/webhook-certs.sh --out DIR   # only generate: DIR/ca.crt, DIR/tls.crt, DIR/tls.key
#
# Run it after `kubectl apply -k deploy/k8s/`, and again before the
# certificate expires (DAYS, default 825). The webhook picks up the renewed
# Secret without a restart once the kubelet has updated the volume (up to
# about a minute); the caBundle keeps the previous CA next to the new one, so
# the API server trusts the old certificate during that minute too.
#
# Environment: NAMESPACE (watertight-system), SERVICE (watertight-webhook),
# SECRET (watertight-webhook-tls), WEBHOOK_CONFIG (watertight-injector),
# DAYS (825). Needs openssl (1.1.1 or later) and, unless --out, kubectl.
set -euo pipefail

NAMESPACE=${NAMESPACE:-watertight-system}
SERVICE=${SERVICE:-watertight-webhook}
SECRET=${SECRET:-watertight-webhook-tls}
WEBHOOK_CONFIG=${WEBHOOK_CONFIG:-watertight-injector}
DAYS=${DAYS:-825}

out=""
case "${1:-}" in
  "") ;;
  --out) out=${2:?--out needs a directory} ;;
  *) echo "usage: $0 [--out DIR]" >&2; exit 2 ;;
esac

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
host="$SERVICE.$NAMESPACE.svc"

# The CA: it signs the serving certificate and nothing else; its key is
# thrown away with $dir.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$dir/ca.key" -out "$dir/ca.crt" -days "$DAYS" \
  -subj "/CN=watertight-webhook-ca" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# The serving certificate: the API server checks the Service's DNS name.
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$dir/tls.key" -out "$dir/tls.csr" -subj "/CN=$host" 2>/dev/null
cat > "$dir/ext.cnf" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$SERVICE,DNS:$SERVICE.$NAMESPACE,DNS:$host,DNS:$host.cluster.local
EXT
openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
  -out "$dir/tls.crt" -days "$DAYS" -extfile "$dir/ext.cnf" 2>/dev/null
openssl verify -CAfile "$dir/ca.crt" "$dir/tls.crt" >/dev/null

if [ -n "$out" ]; then
  mkdir -p "$out"
  cp "$dir/ca.crt" "$dir/tls.crt" "$dir/tls.key" "$out/"
  echo "wrote $out/ca.crt, $out/tls.crt, $out/tls.key for $host"
  exit 0
fi

kubectl -n "$NAMESPACE" create secret tls "$SECRET" --cert "$dir/tls.crt" --key "$dir/tls.key" \
  --dry-run=client -o yaml | kubectl apply -f -

# The new CA first, then the newest CA of the current bundle (if any).
previous=$(kubectl get mutatingwebhookconfiguration "$WEBHOOK_CONFIG" \
  -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | { base64 -d 2>/dev/null || true; } |
  awk '/-----BEGIN CERTIFICATE-----/ {n++} n == 1')
cp "$dir/ca.crt" "$dir/bundle.pem"
if [ -n "$previous" ]; then
  printf '%s\n' "$previous" >>"$dir/bundle.pem"
fi
bundle=$(base64 <"$dir/bundle.pem" | tr -d '\n')
# Every webhook of the configuration calls the same Service.
webhooks=$(kubectl get mutatingwebhookconfiguration "$WEBHOOK_CONFIG" -o jsonpath='{range .webhooks[*]}x{end}')
patch=""
for ((i = 0; i < ${#webhooks}; i++)); do
  if [ -n "$patch" ]; then patch+=","; fi
  patch+="{\"op\":\"add\",\"path\":\"/webhooks/$i/clientConfig/caBundle\",\"value\":\"$bundle\"}"
done
if [ -z "$patch" ]; then
  echo "$0: mutatingwebhookconfiguration $WEBHOOK_CONFIG has no webhooks" >&2
  exit 1
fi
kubectl patch mutatingwebhookconfiguration "$WEBHOOK_CONFIG" --type=json -p "[$patch]"
echo "secret $NAMESPACE/$SECRET and the caBundle of $WEBHOOK_CONFIG updated for $host"
