#!/usr/bin/env bash
# Installs film_restore and everything its tests need into the current Python.
# torch goes first and pinned: on CPU machines the 2.13.0 CPU build; on a GPU node set
# FILM_RESTORE_TORCH to the build you want (e.g. "torch==2.13.0" from the CUDA index).
# onnxruntime comes with the project as its CPU build; on a GPU node set
# FILM_RESTORE_ONNXRUNTIME=onnxruntime-gpu (or a pinned version of it) so the face models run on
# CUDA: it replaces the CPU build, which installs the same module and would shadow it.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install "${FILM_RESTORE_TORCH:-torch==2.13.0}"
# insightface without its requirements: it names opencv-python (GUI, needs libGL), we use opencv-python-headless;
# pyproject.toml lists its real requirements. One OpenCV is installed: `pip list | grep -i opencv` shows one line
# (and pip says "insightface requires opencv-python, which is not installed": expected, cv2 is there).
python -m pip install --no-deps "insightface>=0.7.3"
python -m pip install -e '.[dev]'
ONNXRUNTIME="${FILM_RESTORE_ONNXRUNTIME:-onnxruntime}"
if [ "$ONNXRUNTIME" != onnxruntime ]; then
    python -m pip uninstall -y onnxruntime
    python -m pip install "$ONNXRUNTIME"
    # Again over its own files: uninstalling the CPU build removed the module both builds share.
    python -m pip install --force-reinstall --no-deps "$ONNXRUNTIME"
fi
# The review page's browser tests render report.html in headless chromium (Debian's package);
# elsewhere they skip.
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium \
        || echo "install.sh: chromium could not be installed; the report's browser test will skip" >&2
fi
