"""Provisioning of tenants' data planes from templates."""
