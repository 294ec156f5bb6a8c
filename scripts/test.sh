#!/usr/bin/env bash
# Runs the whole test suite. Test state (SQLite file, broker folders, media, Milvus data) lives in
# var/test so it never touches the data of `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."
export VAR_DIR=${TEST_VAR_DIR:-$PWD/var/test}
rm -rf "$VAR_DIR"
mkdir -p "$VAR_DIR"
exec .venv/bin/python -m pytest "$@"
