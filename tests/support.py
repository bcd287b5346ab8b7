"""Constants shared by the tests."""

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-secret-never-leaks-42"
