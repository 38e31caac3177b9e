#!/usr/bin/env bash
# Install fedcare and what it needs from the system, on Debian/Ubuntu with Python >= 3.11.
#   bash scripts/install.sh            # for `fedcare demo` (Pango for the PDF report)
#   bash scripts/install.sh --test     # also the servers the tests start: Orthanc PACS, PostgreSQL, poppler
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz0b fonts-dejavu-core)
extras=()
if [ "${1:-}" = "--test" ]; then
    packages+=(orthanc orthanc-dicomweb postgresql poppler-utils)
    extras=(".[dev]")
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

# torch is pinned to its CPU wheel (torch==2.13.0) in pyproject.toml.
python3 -m pip install -q -e "${extras[@]:-.}"
echo "fedcare installed: $(command -v fedcare || echo 'fedcare (python3 -m fedcare)')"
