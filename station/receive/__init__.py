"""Ways instances come in: the C-STORE SCP (and, later, drop folders)."""
