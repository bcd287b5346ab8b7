"""Admission: rate limits, budget and credit reservations, model allow-lists."""
