#!/usr/bin/env bash
# Token endpoint throughput of our OpenID Provider against the peer node-oidc-provider, both
# measured by the peer harness (../shared/bench/peer-oidc/bench.sh) in the same run.
#
#   bench/token_endpoint.sh            (from the repository root; see bench/README.md)
#
# Our server runs as in production: NICECARD_MODE=production, PostgreSQL (a fresh database,
# dropped afterwards), `nicecard db upgrade`, `nicecard keys init`, `nicecard serve` with
# NICECARD_WORKERS processes (each on its own SO_REUSEPORT socket: identity/serving.py).
# Clients: `bench` (client_secret_basic, registered with `nicecard clients add`, its generated
# secret handed to bench.sh) and `bench-jwt` (private_key_jwt ES256, from a clients file, with
# the public key the peer harness wrote).
#
# Knobs (defaults in brackets): PEER [1] (also measure node-oidc-provider first), PEER_DIR
# [../shared/bench/peer-oidc], PG_URL [postgresql://postgres@127.0.0.1:5432/postgres],
# NICECARD_WORKERS [2], LOG_LEVEL [info], PORT [8765], PEER_PORT [3999], and bench.sh's own
# (DURATION, REPS, CONNS, SCENARIOS, WARMUP...), passed through.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEER=${PEER:-1}
PEER_DIR=${PEER_DIR:-$ROOT/../shared/bench/peer-oidc}
PG_URL=${PG_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
WORKERS=${NICECARD_WORKERS:-2}
LOG_LEVEL=${LOG_LEVEL:-info}
PORT=${PORT:-8765}
PEER_PORT=${PEER_PORT:-3999}
PY=$ROOT/.venv/bin/python
NICECARD=$ROOT/.venv/bin/nicecard
RECORDED_BASIC=4900 # node-oidc-provider 9.13.3, token_basic@c16, results/ in the harness
RECORDED_PKJWT=3100 # same, token_pkjwt@c16

for t in node npm wrk jq curl; do command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }; done
[[ -x $PEER_DIR/bench.sh ]] || { echo "no peer harness at $PEER_DIR (set PEER_DIR)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/nicecard-bench.XXXXXX)
DB=nicecard_bench_$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
SERVER=""
PEER_PID=""
pg() { "$PY" - "$PG_URL" "$1" <<'EOF'
import sys, sqlalchemy as sa
from sqlalchemy.engine import make_url
url = make_url(sys.argv[1]).set(drivername="postgresql+psycopg")
engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
with engine.connect() as conn:
    conn.execute(sa.text(sys.argv[2]))
engine.dispose()
EOF
}
stop() { # stop one process we started (and its children), by PID; SIGKILL after 10 s
  local pid=$1 children
  kill -0 "$pid" 2>/dev/null || return 0
  children=$(pgrep -P "$pid" || true)
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "# $pid did not stop in 10 s: SIGKILL" >&2
    kill -9 "$pid" $children 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  [[ -n $SERVER ]] && stop "$SERVER"
  [[ -n $PEER_PID ]] && stop "$PEER_PID"
  pg "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for p in "$PORT" "$PEER_PORT"; do
  if curl -s -m 2 -o /dev/null "http://127.0.0.1:$p/"; then echo "port $p is in use" >&2; exit 1; fi
done
wait_for() { for _ in $(seq 1 100); do curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }

# ---- the harness, in a scratch copy (node_modules stays out of the repository) ------------
cp -r "$PEER_DIR" "$WORK/peer" && chmod -R u+w "$WORK/peer"
(cd "$WORK/peer" && npm install --silent --no-audit --no-fund >/dev/null)
HARNESS=$WORK/peer

# ---- the peer: started first, since it generates bench-jwt's key pair -----------------------
(cd "$HARNESS" && NODE_ENV=production exec node peer-server.mjs "$PEER_PORT" >"$WORK/peer.log" 2>&1) &
PEER_PID=$!
wait_for "http://127.0.0.1:$PEER_PORT/.well-known/openid-configuration"
cp "$HARNESS/keys/bench-jwt.public.jwk.json" "$WORK/bench-jwt.public.jwk.json"
if [[ $PEER == 1 ]]; then
  echo "## peer: node-oidc-provider (1 process)"
  SERVER_PID=$PEER_PID "$HARNESS/bench.sh" "http://127.0.0.1:$PEER_PORT" | tee "$WORK/peer.txt"
fi
stop "$PEER_PID"; PEER_PID=""

# ---- ours -----------------------------------------------------------------------------------
pg "CREATE DATABASE \"$DB\""
export NICECARD_MODE=production
export NICECARD_ISSUER=https://id.bench.example  # production wants https; load goes to loopback
export NICECARD_IDENTITY_DATABASE_URL=${PG_URL%/*}/$DB
export NICECARD_LEDGER_DATABASE_URL=$NICECARD_IDENTITY_DATABASE_URL
export NICECARD_KEK
NICECARD_KEK=$(head -c 32 /dev/urandom | base64)
export NICECARD_FC_SIMULATOR=false NICECARD_FC_ISSUER=https://fc.bench.example/api/v2
export NICECARD_FC_CLIENT_SECRET
NICECARD_FC_CLIENT_SECRET=$(head -c 24 /dev/urandom | base64)
export NICECARD_DATA_DIR=$WORK/var NICECARD_PORT=$PORT NICECARD_WORKERS=$WORKERS
export NICECARD_LOG_LEVEL=$LOG_LEVEL
export NICECARD_CLIENTS_FILE=$WORK/clients.json
cat >"$NICECARD_CLIENTS_FILE" <<EOF
{"clients": [{"client_id": "bench-jwt", "token_endpoint_auth_method": "private_key_jwt",
  "token_endpoint_auth_signing_alg": "ES256", "grant_types": ["client_credentials"],
  "scope": "acts:write", "jwks_file": "bench-jwt.public.jwk.json"}]}
EOF
cd "$WORK"
"$NICECARD" db upgrade >/dev/null
"$NICECARD" keys init >/dev/null
SECRET=$("$NICECARD" clients add bench --auth-method client_secret_basic --scope acts:write --json | jq -r .client_secret)
"$NICECARD" serve >"$WORK/server.log" 2>&1 &
SERVER=$!
wait_for "http://127.0.0.1:$PORT/readyz"
PIDS="$SERVER $({ pgrep -P "$SERVER" || true; } | tr '\n' ' ')"
cpu_seconds() { # "pid:seconds" of user+system CPU for each of our processes
  local p hz; hz=$(getconf CLK_TCK)
  for p in $PIDS; do awk -v p="$p" -v hz="$hz" '{printf "%s:%.1f ", p, ($14+$15)/hz}' "/proc/$p/stat"; done
}
echo "## ours: nicecard serve, production, PostgreSQL, $WORKERS workers, log level $LOG_LEVEL"
CPU_BEFORE=$(cpu_seconds)
SERVER_PID=$PIDS TOKEN_URL=http://127.0.0.1:$PORT/token JWKS_URL=http://127.0.0.1:$PORT/jwks \
  ASSERTION_AUD=issuer JWT_KEY=$HARNESS/keys/bench-jwt.private.jwk.json \
  "$HARNESS/bench.sh" "http://127.0.0.1:$PORT" bench "$SECRET" | tee "$WORK/ours.txt"
# Each worker's share of the work (the supervisor and multiprocessing's resource tracker idle):
# with one socket per worker both should be busy, not one doing everything.
echo "# CPU seconds per process (pid:before -> pid:after): $CPU_BEFORE-> $(cpu_seconds)"

# ---- ratios ---------------------------------------------------------------------------------
median() { awk -v k="$2" '/^# medians/{m=1; next} m && $1==k {print $2}' "$1"; }
echo "## ratios (ours / peer, requests per second; medians)"
for scenario in discovery jwks token_basic token_pkjwt; do
  for c in ${CONNS:-16 64}; do
    key=$scenario@c$c
    ours=$(median "$WORK/ours.txt" "$key")
    [[ -z $ours ]] && continue
    line=$(printf '%-18s ours %9s' "$key" "$ours")
    if [[ $PEER == 1 ]]; then
      peer=$(median "$WORK/peer.txt" "$key")
      line+=$(printf '  peer %9s  ratio %s' "$peer" "$(awk -v a="$ours" -v b="$peer" 'BEGIN{printf "%.2f", a/b}')")
    fi
    case $key in
      token_basic@c16) line+=$(awk -v a="$ours" -v b=$RECORDED_BASIC 'BEGIN{printf "  vs recorded 4,900/s: %.2f", a/b}') ;;
      token_pkjwt@c16) line+=$(awk -v a="$ours" -v b=$RECORDED_PKJWT 'BEGIN{printf "  vs recorded 3,100/s: %.2f", a/b}') ;;
    esac
    echo "$line"
  done
done
