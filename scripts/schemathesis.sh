#!/usr/bin/env bash
# Schema fuzzing: starts a debug-build `tianji serve` on a fresh SQLite data dir and a free
# port, then runs schemathesis (pinned, in a venv of its own) against its /openapi.json with
# every check, once with a user token and once with an admin token. Bounded in examples per
# operation and in wall time; exits non-zero on any failure. Settings in schemathesis.toml.
#
#   bash scripts/schemathesis.sh            # both roles
#   SCHEMATHESIS_MAX_EXAMPLES=200 SCHEMATHESIS_SEED=$RANDOM bash scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
CACHE_DIR="${TIANJI_CACHE_DIR:-$HOME/.cache/tianji}"
VENV="$CACHE_DIR/venv-schemathesis-$SCHEMATHESIS_VERSION"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-30}"
TIME_LIMIT_SECS="${SCHEMATHESIS_TIME_LIMIT_SECS:-120}" # per role
SEED="${SCHEMATHESIS_SEED:-12}"                       # fixed, so CI runs are repeatable
CONFIG="$PWD/scripts/schemathesis.toml"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"

if [ ! -x "$VENV/bin/schemathesis" ]; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  # Python 3.12 or newer when there is one (PATH or pyenv): 3.11's ast.parse trips over the
  # source of hypothesis's lambdas ("AST constructor recursion depth mismatch").
  for python in "${PYTHON:-}" python3.13 python3.12 "$(ls -d "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 2>/dev/null | tail -1)" python3; do
    if [ -n "$python" ] && "$python" -c "import venv" >/dev/null 2>&1; then break; fi
  done
  echo "with $("$python" --version)"
  "$python" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$VENV/bin/schemathesis" --version

cargo build --quiet --bin tianji
BIN="$CARGO_TARGET_DIR/debug/tianji"

DATA_DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export TIANJI_BIND="127.0.0.1:$PORT"
export TIANJI_DATA_DIR="$DATA_DIR"
export TIANJI_JWT_SECRET="schemathesis-jwt-secret-0123456789abcdef0123"
export TIANJI_PAYMENT_SECRET="schemathesis-payment-secret-0123456789abcdef"
export RUST_LOG="${RUST_LOG:-error}"
unset TIANJI_DATABASE_URL TIANJI_REDIS_URL

SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$DATA_DIR"
}
trap cleanup EXIT

"$BIN" serve >"$DATA_DIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$DATA_DIR/server.log" >&2; echo "tianji did not start" >&2; exit 1; fi
  sleep 0.1
done

USER_TOKEN=$("$BIN" token --user 7 --ttl 1h)
ADMIN_TOKEN=$("$BIN" token --user 1 --admin --ttl 1h)

failed=0
for role in user admin; do
  if [ "$role" = admin ]; then token=$ADMIN_TOKEN; else token=$USER_TOKEN; fi
  printf '\n== schemathesis as %s (max %s examples per operation, %ss at most)\n' "$role" "$MAX_EXAMPLES" "$TIME_LIMIT_SECS"
  # From the data dir, so schemathesis's cache is thrown away with it.
  if ! (cd "$DATA_DIR" && timeout --kill-after=10 "$TIME_LIMIT_SECS" "$VENV/bin/schemathesis" \
    --config-file "$CONFIG" run \
    "http://127.0.0.1:$PORT/openapi.json" \
    --checks all \
    --header "Authorization: Bearer $token" \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --workers 4 \
    --request-timeout 10); then
    echo "schemathesis as $role: FAILED (or out of time)" >&2
    failed=1
  fi
done
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "tianji exited during the run:" >&2
  tail -50 "$DATA_DIR/server.log" >&2
  failed=1
fi
exit "$failed"
