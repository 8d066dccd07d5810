"""OpenID providers for the SSO tests: the real `oidc-provider` (Node) and a small one whose tokens tests shape."""

from tests.support.oidc.fake import FakeProvider
from tests.support.oidc.node import NodeProvider, sign_in_at_provider

__all__ = ["FakeProvider", "NodeProvider", "sign_in_at_provider"]
