#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/web) when /usr/bin/chromium is
# missing. Playwright drives that binary and never downloads a browser of its own. Prints
# what it did; never fails the build (the browser tests skip, or fail under CI=true).
set -u
CHROMIUM=/usr/bin/chromium

[ -x "$CHROMIUM" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$CHROMIUM missing and no apt-get here: the browser tests will not run"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "$CHROMIUM missing and no root or passwordless sudo: the browser tests will not run"
  exit 0
fi
apt_get() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q "$@"; }

echo "installing Chromium for the browser tests: ${as_root[*]} apt-get install -y chromium"
# A fresh image has no package lists: update and retry once before giving up.
if apt_get install chromium || { apt_get update && apt_get install chromium; }; then
  echo "installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
else
  echo "could not install Chromium: the browser tests will not run"
fi
exit 0
