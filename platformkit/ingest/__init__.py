"""The reference ingest: the gateways' uplink into PostgreSQL, and the alarm desk.

``python -m platformkit.ingest --help``; docs/PLATFORM.md, "The platform's side".
"""
