"""The shared core: the event contract, errors, clock, back-off, supervision, state files,
and the ports that drivers implement."""
