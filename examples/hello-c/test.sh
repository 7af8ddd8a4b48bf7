#!/bin/sh
# The sample project's tests: run inside the microVM by `make demo`.
set -eu
fail=0
check() { if [ "$2" = "$3" ]; then echo "ok   - $1"; else echo "FAIL - $1: got '$2', want '$3'"; fail=1; fi; }
check "default greeting" "$(./hello | head -1)" "hello, world!"
check "named greeting" "$(./hello kiln | head -1)" "hello, kiln!"
long=$(printf 'x%.0s' $(seq 1 80))
if ./hello "$long" >/dev/null 2>&1; then check "long name rejected" "accepted" "rejected"; else check "long name rejected" "rejected" "rejected"; fi
[ $fail -eq 0 ] && echo "all tests passed"
exit $fail
