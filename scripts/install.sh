#!/usr/bin/env bash
# Install fedcare into a virtual environment, with what it needs from the system, on
# Debian 12 / Ubuntu 24.04 (any Debian-like system with Python >= 3.11).
#
#   bash scripts/install.sh            # for `fedcare demo`: Pango/HarfBuzz and fonts for the PDF report
#   bash scripts/install.sh --test     # also the dev extras and the servers the tests start:
#                                      # Orthanc PACS (+ DICOMweb), PostgreSQL, poppler (pdftotext),
#                                      # Debian's chromium for the console's browser tests (Playwright
#                                      # drives /usr/bin/chromium; no browser is downloaded)
#                                      # and Eclipse Mosquitto (the MQTT broker the stream tests start)
#
# The environment is the active one when VIRTUAL_ENV is set, else FEDCARE_VENV, else ./.venv
# (created with PYTHON, default python3). Debian's own Python refuses `pip install` outside a
# virtual environment (PEP 668), so fedcare never installs into it. Re-running is cheap: system
# packages already present are not fetched again, and pip is skipped when pyproject.toml has not
# changed since the last install into that environment.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "install.sh: $*" >&2; exit 1; }

test_extras=0
for arg in "$@"; do
    case "$arg" in
        --test) test_extras=1 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) fail "unknown option '$arg'; use --test or nothing" ;;
    esac
done

# --- system packages (only those missing) -------------------------------------------------------
# python3-venv: `python3 -m venv` on Debian/Ubuntu; libharfbuzz-subset0: WeasyPrint's font subsetting
# (without it every PDF report prints warnings).
packages=(python3-venv libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz0b libharfbuzz-subset0 fonts-dejavu-core)
if [ "$test_extras" = 1 ]; then
    packages+=(orthanc orthanc-dicomweb postgresql poppler-utils chromium mosquitto)  # mosquitto: MQTT broker the stream tests start
fi
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || fail "missing system packages ${missing[*]} and no apt-get; install them with your package manager"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || fail "missing system packages ${missing[*]}; run this script as root or install sudo"
        SUDO="sudo"
    fi
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- the virtual environment ------------------------------------------------------------------------
venv="${VIRTUAL_ENV:-${FEDCARE_VENV:-.venv}}"
if [ ! -x "$venv/bin/python" ]; then
    python="${PYTHON:-python3}"
    command -v "$python" >/dev/null || fail "no '$python' on PATH; install python3 (>= 3.11) or set PYTHON=/path/to/python3.11"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || fail "$("$python" --version 2>&1) is too old: fedcare needs Python >= 3.11 (set PYTHON=/path/to/python3.11)"
    echo "creating the virtual environment $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "$venv runs $("$venv/bin/python" --version 2>&1); fedcare needs Python >= 3.11: remove $venv and re-run"

# --- fedcare itself (torch is pinned to its CPU wheel, torch==2.13.0, in pyproject.toml) -----------
target="."
if [ "$test_extras" = 1 ]; then target=".[dev]"; fi
stamp="$venv/.fedcare-install"
installed="$(sha256sum pyproject.toml | cut -d' ' -f1) $(pwd)"
done_before="$(cat "$stamp" 2>/dev/null || true)"
# a test install (.[dev]) also satisfies a plain one
if { [ "$done_before" = "$installed .[dev]" ] || [ "$done_before" = "$installed $target" ]; } \
        && "$venv/bin/python" -c 'import fedcare' 2>/dev/null; then
    echo "fedcare already installed in $venv (pyproject.toml unchanged)"
else
    # PyPI's Linux torch wheel is the CUDA build (gigabytes of nvidia-* wheels). Where pip's own
    # configuration does not already provide the CPU build, point FEDCARE_TORCH_INDEX at PyTorch's
    # CPU wheel index (see README); it is used only when set, nothing is contacted otherwise.
    index_args=()
    if [ -n "${FEDCARE_TORCH_INDEX:-}" ]; then
        index_args=(--extra-index-url "$FEDCARE_TORCH_INDEX")
    fi
    echo "installing fedcare$([ "$test_extras" = 1 ] && echo ' with its dev extras') into $venv (pip)…"
    "$venv/bin/python" -m pip install -q "${index_args[@]}" -e "$target"
    echo "$installed $target" > "$stamp"
fi

echo "fedcare installed: $venv/bin/fedcare"
if [ "${VIRTUAL_ENV:-}" != "$(cd "$venv" && pwd)" ]; then
    echo "activate it with:  source $venv/bin/activate   (or call $venv/bin/fedcare directly)"
fi
