#!/usr/bin/env bash
# Install Debian's InfluxDB (1.x) for the export tests (tests/exports) when /usr/bin/influxd
# is missing. The tests start their own influxd on loopback ports with a config of their
# own, so no system service is started or enabled here. Prints what it did; never fails the
# build (the InfluxDB tests skip, or fail under CI=true).
set -u
INFLUXD=/usr/bin/influxd

[ -x "$INFLUXD" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$INFLUXD missing and no apt-get here: the InfluxDB tests will not run"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "$INFLUXD missing and no root or passwordless sudo: the InfluxDB tests will not run"
  exit 0
fi
apt_get() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q "$@"; }

# The package's scripts would start influxd as a system service: a policy-rc.d answering
# 101 ("action forbidden") stops invoke-rc.d and deb-systemd-invoke from doing so. Removed
# on exit; one already there is left alone.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$POLICY" >/dev/null \
    && "${as_root[@]}" chmod 755 "$POLICY" \
    && trap '"${as_root[@]}" rm -f "$POLICY"' EXIT
fi

echo "installing InfluxDB for the export tests: ${as_root[*]} apt-get install -y influxdb"
# A fresh image has no package lists: update and retry once before giving up.
if apt_get install influxdb || { apt_get update && apt_get install influxdb; }; then
  echo "installed $("$INFLUXD" version 2>/dev/null || echo influxd)"
else
  echo "could not install InfluxDB: the InfluxDB tests will not run"
fi
exit 0
