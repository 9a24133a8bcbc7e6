"""The carebed command line."""
