"""The local platform: the whole topology on loopback, every process real software."""
