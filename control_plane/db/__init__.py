"""Control-plane tables and migrations."""
