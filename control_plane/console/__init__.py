"""The admin console: server-rendered pages (jinja2 and htmx) over the control plane's own services."""
