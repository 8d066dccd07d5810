"""The control-plane Litestar application."""

from __future__ import annotations

import msgspec
from litestar import Litestar, Router, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme, Tag
from sqlalchemy import text

from control_plane.analytics.routes import CellTokenController
from control_plane.api_keys.routes import ApiKeyController
from control_plane.audit.routes import AuditController
from control_plane.billing.jobs import billing_task
from control_plane.billing.routes import BillingIntakeController, FinanceController, TenantBillingController
from control_plane.cells.routes import CellConfigController, CellController
from control_plane.console.routes import console_router
from control_plane.http import SESSION_COOKIE, authorize, edge_middleware, provide_principal, provide_services
from control_plane.identity.routes import (
    AuthController,
    InviteAcceptController,
    InviteController,
    PlatformInviteController,
    UserController,
)
from control_plane.memberships.routes import MemberController
from control_plane.provisioning.routes import ProvisioningRunController, TenantProvisioningController
from control_plane.runtime import Runtime
from control_plane.settings import Settings
from control_plane.sources.routes import SourceController
from control_plane.sso.routes import SignInPageController, SsoConnectionController, SsoSignInController
from control_plane.tenants.routes import TenantController
from kernel.errors import Unavailable
from kernel.http import EXCEPTION_HANDLERS, Problem, declare_problems, request_context_middleware

API_VERSION = "1.0.0"


class Health(msgspec.Struct):
    status: str


@get("/health", operation_id="Health", tags=["Health"], opt={"public": True})
async def health() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@get("/ready", operation_id="Ready", tags=["Health"], opt={"public": True})
async def ready(state: State) -> Health:
    """Readiness: the database (and Redis, when a driver uses it) answers. 503 while one does not."""
    runtime: Runtime = state.runtime
    try:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        raise Unavailable("The database does not answer.", code="database_unavailable") from None
    await runtime.kv.ping()
    return Health(status="ok")


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Livora control plane",
        version=API_VERSION,
        description=(
            "Tenants, users, roles, API keys and the audit log of a Livora installation. "
            "Errors are RFC 9457 problem details (`application/problem+json`) with a stable `code`."
        ),
        path="/schema",
        render_plugins=[JsonRenderPlugin()],
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http", scheme="bearer", description="A session token from Login, or an API key (`lvk_…`)."
                ),
                "session_cookie": SecurityScheme(type="apiKey", name=SESSION_COOKIE, security_scheme_in="cookie"),
            }
        ),
        security=[{"bearer": []}, {"session_cookie": []}],
        tags=[
            Tag(name="Tenants"),
            Tag(name="Members"),
            Tag(name="Invitations"),
            Tag(name="API keys"),
            Tag(name="Sources"),
            Tag(name="Provisioning"),
            Tag(name="Cells"),
            Tag(name="Billing"),
            Tag(name="Single sign-on"),
        ],
        create_examples=False,
        use_handler_docstrings=True,
    )


ROUTES = [
    health,
    ready,
    AuthController,
    UserController,
    TenantController,
    MemberController,
    InviteController,
    PlatformInviteController,
    InviteAcceptController,
    ApiKeyController,
    CellTokenController,
    SourceController,
    AuditController,
    CellConfigController,
    CellController,
    ProvisioningRunController,
    TenantProvisioningController,
    FinanceController,
    TenantBillingController,
    BillingIntakeController,
    SsoConnectionController,
    SsoSignInController,
    SignInPageController,
]


def _problem_statuses(handler: HTTPRouteHandler, path: str) -> set[int]:
    statuses = {400, 503}
    opt = handler.opt
    if not opt.get("public"):
        statuses |= {401, 403}
    if "{" in path:
        statuses.add(404)
    if handler.http_methods & {"POST", "PUT", "PATCH", "DELETE"}:
        statuses.add(409)
    # A route may declare further answers of its own, e.g. opt={"problems": (422,)}.
    statuses |= set(opt.get("problems", ()))
    if handler.operation_id == "Login":
        # 403 `sso_required`: the organisation enforces single sign-on.
        statuses |= {401, 403, 429}
    if handler.operation_id == "AcceptInvite":
        statuses |= {404, 409, 410}
    return statuses


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Litestar:
    """Build the control plane. Tests pass their own ``settings``; nothing reads ``os.environ`` but ``from_env``."""
    settings = settings or Settings.from_env()
    runtime = runtime or Runtime.build(settings)

    async def close_runtime(app: Litestar) -> None:
        await runtime.close()

    async def start_provisioning(app: Litestar) -> None:
        # Runs execute in this process; runs a stopped process left unfinished resume here.
        await runtime.provisioner.start()

    app = Litestar(
        # The OpenAPI document is served outside this router: public, unguarded.
        # The console's pages: the same guard, HTML error pages and CSRF checks of their own.
        route_handlers=[Router(path="/", route_handlers=ROUTES, guards=[authorize]), console_router()],
        state=State({"runtime": runtime}),
        dependencies={
            "services": Provide(provide_services),
            "principal": Provide(provide_principal),
        },
        middleware=[request_context_middleware, edge_middleware],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=openapi_config(),
        on_startup=[start_provisioning],
        on_shutdown=[close_runtime],
        lifespan=[billing_task],
        signature_types=[Runtime, Problem],
        debug=False,
        # Logging is the process's business (kernel.logging), not the app's: keep Litestar's hands off the root logger.
        logging_config=None,
    )
    declare_problems(app, _problem_statuses)
    return app
