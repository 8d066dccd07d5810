"""Test helpers: databases per test, a live server, a seeded two-tenant world."""
