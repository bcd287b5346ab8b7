#!/usr/bin/env bash
# Debian's InfluxDB (1.x) for the export tests (tests/exports), which start their own influxd
# on loopback ports with a config of their own.
exec bash "$(dirname "$0")/apt-install.sh" /usr/bin/influxd influxdb "the InfluxDB tests"
