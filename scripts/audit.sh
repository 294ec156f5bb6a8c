#!/usr/bin/env bash
# Known vulnerabilities in the runtime dependencies: pip-audit on requirements/runtime.txt and everything it pulls
# in, against PyPI's vulnerability data (AUDIT_SERVICE=osv for OSV). CI runs it after `make lint`; `make audit` too.
#
# Offline-tolerant: when the vulnerability service cannot be reached (no network, or a proxy that serves only the
# package index) it says why and exits 0. When it can, a known vulnerability fails the run (exit 1) with the
# package, version, advisory and fixed versions.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
REQUIREMENTS=${AUDIT_REQUIREMENTS:-requirements/runtime.txt}
SERVICE=${AUDIT_SERVICE:-pypi}
TIMEOUT=${AUDIT_TIMEOUT:-10}

# A real question to the service about a pinned package: it must answer with vulnerability data.
unreachable=$(
  "$PY" - "$SERVICE" "$TIMEOUT" <<'EOF'
import json
import os
import sys
import urllib.request

service, timeout = sys.argv[1], float(sys.argv[2])
if os.environ.get("AUDIT_PROBE_URL"):  # tests point the probe elsewhere
    url = os.environ["AUDIT_PROBE_URL"]
    request = urllib.request.Request(url)
    expected = "vulnerabilities"
elif service == "osv":
    url = "https://api.osv.dev/v1/query"
    request = urllib.request.Request(
        url,
        data=json.dumps({"package": {"name": "django", "ecosystem": "PyPI"}, "version": "5.2"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    expected = "vulns"
else:
    from importlib.metadata import version

    url = f"https://pypi.org/pypi/django/{version('django')}/json"  # what pip-audit asks, per pinned version
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    expected = "vulnerabilities"
try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = json.loads(response.read())
except Exception as exc:  # no network, DNS, TLS, proxy, HTTP error, not JSON: all mean "cannot ask"
    print(f"{url} did not answer ({type(exc).__name__}: {exc})")
    sys.exit(0)
if not isinstance(body, dict) or (expected not in body and service != "osv"):
    print(f"{url} answered without vulnerability data")
EOF
)
if [ -n "$unreachable" ]; then
  echo "audit: skipped, the vulnerability service cannot be reached: $unreachable"
  exit 0
fi

report=$(mktemp)
trap 'rm -f "$report"' EXIT
echo "audit: pip-audit -r $REQUIREMENTS (service: $SERVICE; resolving the dependencies takes a minute or two)"
"$PY" -m pip_audit -r "$REQUIREMENTS" --vulnerability-service "$SERVICE" --progress-spinner off \
  --format json --output "$report"
status=$?
"$PY" - "$report" "$status" <<'EOF'
import json
import sys

path, status = sys.argv[1], int(sys.argv[2])
try:
    with open(path) as handle:
        dependencies = json.load(handle)["dependencies"]
except (OSError, ValueError, KeyError) as exc:
    print(f"audit: pip-audit failed (exit {status}) before writing its report ({type(exc).__name__})")
    sys.exit(1)
audited = [d for d in dependencies if "skip_reason" not in d]
vulnerable = [(d, v) for d in audited for v in d.get("vulns", [])]
for dependency, vuln in vulnerable:
    fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed version yet"
    print(f"  {dependency['name']} {dependency['version']}: {vuln['id']} (fixed in {fixed})")
if vulnerable:
    print(f"audit: {len(vulnerable)} known vulnerabilities in {len({d['name'] for d, _ in vulnerable})} packages")
    sys.exit(1)
if not audited:
    print(f"audit: skipped, the service answered the probe but none of {len(dependencies)} packages could be audited")
    sys.exit(0)
print(f"audit: {len(audited)} packages audited, no known vulnerabilities ({len(dependencies) - len(audited)} skipped)")
EOF
