"""The link to the care platform (MQTT)."""
