"""The JSON API: admin, self, operations. FastAPI routers; the proxy is not here."""
