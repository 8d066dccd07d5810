"""Who belongs to a tenant, with which role."""
