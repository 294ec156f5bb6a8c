#!/usr/bin/env bash
# `make test`, the README's test command: three pytest runs (scripts/test.sh), each from a fresh test state.
#   unit        -m "not integration"
#   lite        every integration test on Milvus Lite (the default engine), less the slow fault scenarios
#   standalone  on a real Milvus standalone server, the integration tests that reach Milvus (marked `milvus` by
#               tests/conftest.py), less the `engine_agnostic` ones (Milvus is only on their way: the lite run
#               proves them)
# The standalone run spends most of its time waiting on its server (collection loads, time ticks), so it runs beside
# the other two, in a state of its own: test folder, PostgreSQL database, Redis databases (scripts/test_lane.py).
# Its output is printed, whole, once it ends; the exit status is that of all three.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
standalone_log=var/test-standalone.log
lane=$(.venv/bin/python scripts/test_lane.py standalone) || exit 1
echo "+ standalone run in the background (log: $standalone_log): $(echo "$lane" | tr '\n' ' ')"
# shellcheck disable=SC2086  # the lane's KEY=VALUE lines are words for env
env $lane MILVUS_ENGINE=standalone bash scripts/test.sh -m "integration and milvus and not slow and not engine_agnostic" \
  >"$standalone_log" 2>&1 &
standalone=$!
trap 'kill $standalone 2>/dev/null' INT TERM

status=0
echo "+ unit run"
bash scripts/test.sh -m "not integration" || status=1
echo "+ lite run"
MILVUS_ENGINE=lite bash scripts/test.sh -m "integration and not slow" || status=1

wait $standalone
standalone_status=$?
echo "+ standalone run (it ran beside the two above), exit status $standalone_status"
cat "$standalone_log"
[ "$standalone_status" -eq 0 ] || status=1
exit $status
