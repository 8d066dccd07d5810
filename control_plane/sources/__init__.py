"""Sources: where a tenant's events come from, each with a write key for its SDKs."""
