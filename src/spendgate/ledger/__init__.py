"""The ledger: schema, migrations, the batched event writer, and every SQL query."""
