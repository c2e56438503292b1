#!/bin/sh
# Install sms-connector into an image's root filesystem: run inside the image being built, as root,
# by both builds (the Dockerfile's final stage, and container/build-offline.sh through chroot).
#
#   install-app.sh WHEEL_DIR
#
# WHEEL_DIR holds the project's wheel and every wheel of container/requirements.txt, nothing else.
# Creates the virtualenv /opt/sms-connector (pip installs the wheels without an index and without
# resolving: the lock already is the full set, and `pip check` proves it is consistent), compiles
# the bytecode now (the root filesystem is read-only at run time), then removes pip, setuptools and
# the test suites some wheels ship from the virtualenv, and adds the worker's user and group, 10001
# (the chart's securityContext).
set -eu
wheels=${1:?usage: install-app.sh WHEEL_DIR}
venv=/opt/sms-connector

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --no-index --no-deps --no-cache-dir --disable-pip-version-check \
    "$wheels"/*.whl
"$venv/bin/python" -m pip check --disable-pip-version-check
"$venv/bin/python" -m pip uninstall --quiet --yes --disable-pip-version-check pip setuptools
# Test suites some wheels ship inside their package (certifi's, for one) are not the application.
find "$venv"/lib/python3*/site-packages -mindepth 2 -maxdepth 2 -type d -name tests -prune -exec rm -rf {} +
"$venv/bin/sms-connector" --version

# A user and group entry, so that tools asking "who am I" get a name; no home, no login shell.
grep -q '^sms-connector:' /etc/group || echo 'sms-connector:x:10001:' >> /etc/group
grep -q '^sms-connector:' /etc/passwd \
    || echo 'sms-connector:x:10001:10001:sms-connector:/nonexistent:/usr/sbin/nologin' >> /etc/passwd
