"""The platform's side, for reference: ingest into PostgreSQL, the alarm desk, the fleet simulator.

Never installed on a gateway: the wheel and the Debian package hold ``gateway`` and ``drivers``
only, and the product never imports this package (``make lint`` checks both).
"""
