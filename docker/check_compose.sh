#!/usr/bin/env bash
# Checks the compose files the way Compose reads them, offline: no image is pulled and no Docker daemon is needed.
# `docker-compose config` (Debian's docker-compose 1.29) validates against the Compose schema, interpolates the
# ${...} values (with docker/.env.example), merges the GPU override and resolves every reference (services in
# depends_on, named volumes, YAML anchors). Then broken copies must be refused, so a checker that accepts anything
# fails here too. CI runs this after `make lint` (.ci/run installs docker-compose).
set -euo pipefail
cd "$(dirname "$0")"
command -v docker-compose >/dev/null || { echo "docker-compose not found (apt-get install docker-compose)" >&2; exit 1; }

# DJANGO_SECRET_KEY is required (${...:?}) and empty in the example: a stand-in for the check only.
export DJANGO_SECRET_KEY=compose-check-only
compose() { docker-compose --env-file "$PWD/.env.example" "$@" config --quiet; }

compose -f docker-compose.yml
echo "docker/docker-compose.yml: valid"
compose -f docker-compose.yml -f docker-compose.gpu.yml
echo "docker/docker-compose.yml + docker-compose.gpu.yml: valid"

# Canaries: each broken copy must be refused.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
refuse() {
  local what=$1 file=$2
  if compose -f "$file" >"$scratch/out" 2>&1; then
    echo "compose check accepted a broken file ($what): the checker does not check" >&2
    exit 1
  fi
  echo "refused as it should be: $what"
}
sed 's/^    restart: unless-stopped$/    restart_policy: unless-stopped/' docker-compose.yml >"$scratch/unknown-key.yml"
refuse "an unknown service key" "$scratch/unknown-key.yml"
sed 's/^      condition: service_healthy$/      condition: service_healthy\n    nowhere:\n      condition: service_started/' \
  docker-compose.yml >"$scratch/missing-service.yml"
refuse "depends_on a service that does not exist" "$scratch/missing-service.yml"
sed 's#- media:/data/media#- nomedia:/data/media#' docker-compose.yml >"$scratch/missing-volume.yml"
refuse "an undeclared named volume" "$scratch/missing-volume.yml"
