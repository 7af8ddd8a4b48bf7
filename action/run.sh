#!/usr/bin/env bash
# The step of kiln's GitHub Action (action.yml): turns the action's inputs, given as INPUT_*
# variables, into `kiln ci run` flags, runs it, appends its summary to $GITHUB_STEP_SUMMARY
# and sets the outputs `report` and `exit-code` in $GITHUB_OUTPUT. The inputs are data: none
# is evaluated by the shell (no eval, globbing off), so a branch name or a build command
# cannot run anything on the runner.
set -euo pipefail
set -f

args=(ci run)

fail() {
  echo "::error::kiln action: $*" >&2
  exit 2
}

# one VAR --flag: the flag with the value, when the value is not empty.
one() {
  local v=${!1:-}
  if [ -n "$v" ]; then args+=("$2" "$v"); fi
}

# words VAR --flag: the flag once per word (separated by spaces or new lines).
words() {
  local w
  for w in ${!1:-}; do args+=("$2" "$w"); done
}

# lines VAR --flag: the flag once per non-empty line, spaces around it trimmed.
lines() {
  local l
  while IFS= read -r l; do
    l=${l#"${l%%[![:space:]]*}"}
    l=${l%"${l##*[![:space:]]}"}
    if [ -n "$l" ]; then args+=("$2" "$l"); fi
  done <<< "${!1:-}"
}

# switch VAR --flag: the flag when the value is "true".
switch() {
  local name=${1#INPUT_}
  name=${name,,}
  case "${!1:-false}" in
    true) args+=("$2") ;;
    false | "") ;;
    *) fail "the input '${name//_/-}': expected true or false, got '${!1}'" ;;
  esac
}

[ -n "${INPUT_BUILD:-}" ] || fail "the input 'build' is required"
one INPUT_REPO --repo
one INPUT_REF --ref
one INPUT_BUILD --build
one INPUT_SETUP --setup
words INPUT_CACHE_KEY --cache-key
switch INPUT_TRUSTED --trusted
one INPUT_TEMPLATE --template
lines INPUT_MATRIX --matrix
words INPUT_SECRETS --secret
words INPUT_ALLOW --allow
words INPUT_ARTIFACTS --artifact
one INPUT_TIMEOUT --timeout
one INPUT_REBUILD --rebuild
switch INPUT_REQUIRE_REPRODUCIBLE --require-reproducible

out=${INPUT_OUT:-${RUNNER_TEMP:-.}/kiln-ci-out}
args+=(--out "$out")
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then args+=(--step-summary "$GITHUB_STEP_SUMMARY"); fi

kiln=${INPUT_KILN:-kiln}
command -v "$kiln" > /dev/null || fail "'$kiln' is not on this runner's PATH: install kiln on the runner (docs/github-actions.md) or set the input 'kiln'"

set +e
"$kiln" "${args[@]}"
code=$?
set -e
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  {
    echo "exit-code=$code"
    echo "report=$out/report.json"
  } >> "$GITHUB_OUTPUT"
fi
exit "$code"
