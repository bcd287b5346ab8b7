"""The hot path: path checks, request rewrite, the upstream client, relay and settlement."""
