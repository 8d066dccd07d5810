"""API keys for a tenant's servers."""
