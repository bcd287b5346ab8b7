#!/usr/bin/env bash
# apt-install.sh BINARY PACKAGE PURPOSE: install Debian's PACKAGE when BINARY is missing,
# for the tests named by PURPOSE. Never starts the package's system service (the tests start
# their own servers). Prints what it did; never fails the build (those tests skip, or fail
# under CI=true).
set -u
BINARY=$1 PACKAGE=$2 PURPOSE=$3

[ -x "$BINARY" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$BINARY missing and no apt-get here: $PURPOSE will not run"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "$BINARY missing and no root or passwordless sudo: $PURPOSE will not run"
  exit 0
fi
apt_get() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q "$@"; }

# A package's scripts may start it as a system service: a policy-rc.d answering 101
# ("action forbidden") stops invoke-rc.d and deb-systemd-invoke from doing so. Removed on
# exit; one already there is left alone.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$POLICY" >/dev/null \
    && "${as_root[@]}" chmod 755 "$POLICY" \
    && trap '"${as_root[@]}" rm -f "$POLICY"' EXIT
fi

echo "installing $PACKAGE for $PURPOSE: ${as_root[*]} apt-get install -y $PACKAGE"
# A fresh image has no package lists: update and retry once before giving up.
if apt_get install "$PACKAGE" || { apt_get update && apt_get install "$PACKAGE"; }; then
  echo "installed $PACKAGE ($BINARY)"
else
  echo "could not install $PACKAGE: $PURPOSE will not run"
fi
exit 0
