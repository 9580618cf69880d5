#!/usr/bin/env bash
# Install chromflow (see install.sh) and run it end to end on the bundled sample nucleus.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/chromflow demo --out chromflow-demo "$@"
