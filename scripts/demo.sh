#!/usr/bin/env bash
# Install chromflow (see install.sh) and run it end to end on the bundled sample nucleus.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# outputs go to chromflow-demo/ in the system temporary folder (the command prints where), not into the clone
exec .venv/bin/chromflow demo "$@"
