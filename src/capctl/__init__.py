"""capctl: run the capacity engine locally — embedded PostgreSQL, migrations, seed, the local
API Gateway emulator, the load test, reconciliation, roll-ups and alerts."""
