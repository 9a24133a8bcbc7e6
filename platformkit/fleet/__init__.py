"""The fleet simulator: many homes, each a real gateway (store, outbox, uplink), and a desk.

``python -m platformkit.fleet --gateways N --duration S`` (docs/FLEET.md). Each simulated home is
the daemon's own composition (``gateway.app.daemon.Gateway``) with its own state directory, fed by
a home's traffic (``traffic``); an operator beside them acknowledges every alarm as it arrives
(``desk``) and checks every gateway's seq stream (``completeness``).
"""
