"""Metering: reading usage from responses, pricing it, estimating tokens. Pure functions."""
