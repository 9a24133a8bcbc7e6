"""Hardware-in-the-loop scenarios (simulated rig by default)."""
