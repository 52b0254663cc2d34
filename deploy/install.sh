#!/bin/sh
# The install steps of the image (Dockerfile, builder stage), also run outside a container by
# tests/test_deploy_image.py: `sh deploy/install.sh TARGET` in a copy of the build context
# creates the virtual environment TARGET holding exactly what pdm.lock pins for production,
# every downloaded file checked against the lock's hashes, and quart_iot itself; no pip, no
# setuptools, no build backend in it.
#
# PYTHON is the interpreter of the environment (default python3), PDM the pdm that reads the
# lock (default pdm; the Dockerfile installs the version ./pdmw pins).
set -eu
target=$1
python=${PYTHON:-python3}
work=$(mktemp -d)
export PDM_CHECK_UPDATE=false
trap 'rm -rf "$work"' EXIT
pip_options="--no-input --disable-pip-version-check"

# The production dependencies as the lock pins them, each with its hashes.
"${PDM:-pdm}" export --prod --format requirements --output "$work/requirements.txt"

# A throw-away environment for building: the backends pinned with their hashes.
"$python" -m venv "$work/build"
"$work/build/bin/pip" install $pip_options --require-hashes --only-binary :all: \
    --requirement deploy/build-requirements.txt
# Every locked file downloaded and hash-checked; those PyPI has only as source are built here,
# with the pinned backends (no build isolation: nothing unpinned is fetched to build them).
"$work/build/bin/pip" wheel $pip_options --require-hashes --no-deps --no-build-isolation \
    --wheel-dir "$work/wheels" --requirement "$work/requirements.txt"
"$work/build/bin/pip" wheel $pip_options --no-deps --no-build-isolation \
    --wheel-dir "$work/wheels" .

# The runtime environment: those wheels and nothing else, installed by the builder's pip
# (the environment itself never has an installer).
"$python" -m venv --without-pip "$target"
"$work/build/bin/pip" --python "$target/bin/python" install $pip_options --no-index --no-deps \
    "$work/wheels"/*.whl
