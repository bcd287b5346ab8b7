#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/web). Playwright drives that binary and
# never downloads a browser of its own.
exec bash "$(dirname "$0")/apt-install.sh" /usr/bin/chromium chromium "the browser tests"
