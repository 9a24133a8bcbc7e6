"""Voice-call camera: the HTTP trigger client, its typed errors and the call runner."""
