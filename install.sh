#!/usr/bin/env bash
# Installs film_restore and everything its tests need into the current Python.
# torch goes first and pinned: on CPU machines the 2.13.0 CPU build; on a GPU node set
# FILM_RESTORE_TORCH to the build you want (e.g. "torch==2.13.0" from the CUDA index).
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install "${FILM_RESTORE_TORCH:-torch==2.13.0}"
python -m pip install -e '.[dev]'
# The report's browser test renders report.html in headless chromium (Debian's package);
# elsewhere that test skips.
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium \
        || echo "install.sh: chromium could not be installed; the report's browser test will skip" >&2
fi
