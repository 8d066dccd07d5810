"""Roles and permissions: one casbin policy, one guard on every route."""
