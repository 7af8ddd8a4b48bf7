#!/bin/sh
# The acceptance check of docs/security.md: a guest writes 4 GiB of output
# (`cat /dev/zero | head -c 4G`) through the daemon's blocking exec API; prints the daemon's
# peak memory (VmHWM) before and after. Slow under TCG (the guest's pipes move ~20 MB/s).
# Usage: scripts/flood-4g.sh [template]   (needs a built kiln: make build)
set -eu
KILN=${KILN:-target/release/kiln}
TEMPLATE=${1:-base}
export KILN_HOME=$(mktemp -d /tmp/kiln-flood.XXXXXX)
shared=${SHARED_KILN_HOME:-$HOME/.local/share/kiln}
for d in store kernels templates snapshots locks; do mkdir -p "$shared/$d"; ln -s "$shared/$d" "$KILN_HOME/$d"; done
cp "$shared/accel-probe.json" "$KILN_HOME/" 2>/dev/null || true
export KILN_SHM_DIR=${KILN_SHM_DIR:-/dev/shm/kiln-flood}
sock=$KILN_HOME/kiln.sock
$KILN serve --socket "$sock" 2>"$KILN_HOME/serve.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$KILN_HOME"' EXIT
i=0; while [ ! -S "$sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
hwm() { grep VmHWM /proc/$daemon/status | awk '{print $2}'; }
id=$(curl -sS --unix-socket "$sock" -X POST http://kiln/v1/sandboxes -d "{\"template\":\"$TEMPLATE\",\"ttl_seconds\":3600}" | sed 's/.*"id":"\([^"]*\)".*/\1/')
echo "sandbox $id; daemon VmHWM before: $(hwm) kB"
start=$(date +%s)
curl -sS --unix-socket "$sock" -X POST "http://kiln/v1/sandboxes/$id/exec" -o "$KILN_HOME/response.json" \
  -d '{"cmd":"cat /dev/zero | head -c 4294967296; echo end >&2","timeout_seconds":3000}'
echo "response: $(wc -c < "$KILN_HOME/response.json") bytes, ending: $(tail -c 300 "$KILN_HOME/response.json")"
echo "daemon VmHWM after: $(hwm) kB; $(( $(date +%s) - start )) s"
