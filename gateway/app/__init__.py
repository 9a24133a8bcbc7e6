"""The application: configuration, composition root, command handlers, control socket."""
