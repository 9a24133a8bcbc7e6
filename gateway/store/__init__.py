"""The durable event store on the gateway (SQLite)."""
