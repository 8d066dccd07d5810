"""The cell's operations API: reconciliation and the dead-letter store, for Livora operators."""
