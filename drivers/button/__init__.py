"""Emergency-button receiver on a serial line: the pure codec and the link that speaks it."""
