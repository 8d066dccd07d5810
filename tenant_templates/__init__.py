"""Tenant templates: versioned blueprints (data files) of a tenant's cell space and starter content."""

from tenant_templates.catalog import Catalog, TemplateError, parse, shipped
from tenant_templates.schema import Blueprint, Template

__all__ = ["Blueprint", "Catalog", "Template", "TemplateError", "parse", "shipped"]
