"""Storage: the spool of received instances, the journal of their states, the quarantine,
the storage lock and recovery."""
