"""Single sign-on for tenants: OpenID Connect connections, the sign-in flow and domain discovery."""
