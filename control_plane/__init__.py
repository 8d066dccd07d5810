"""The control plane: tenants, users, roles, API keys and the audit log, served by Litestar."""
