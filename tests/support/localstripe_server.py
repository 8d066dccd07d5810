"""localstripe on 127.0.0.1 with its state in memory, plus the Stripe API routes billing needs that it lacks.

Added, following Stripe's API reference:
- one-off invoices (``POST /v1/invoices`` without a subscription; ``pending_invoice_items_behavior``,
  ``auto_advance`` and ``collection_method`` accepted);
- invoice items created on a draft invoice (``invoice=in_…``) join its lines; ``period[start|end]``;
- ``POST /v1/invoices/{id}/finalize`` (and the ``invoice.finalized`` event);
- ``invoice.paid`` events beside ``invoice.payment_succeeded``;
- ``Idempotency-Key``: a repeated POST with the same key answers the first response again
  (``Idempotent-Replayed: true``); the same key with other parameters is a 400 ``idempotency_error``.

Run ``python -m tests.support.localstripe_server --port N``; tests use ``LocalStripe``.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _patch() -> Any:
    from aiohttp import web
    from localstripe import resources
    from localstripe.errors import UserError
    from localstripe.resources import Event, Invoice, InvoiceItem, InvoiceLineItem, extra_apis, schedule_webhook

    # State in memory only: the stock command pickles it to a fixed file in /tmp and reloads it.
    resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
    resources.Store.try_load_from_disk = lambda self: None  # type: ignore[method-assign]

    original_create = Invoice._api_create.__func__  # type: ignore[attr-defined]

    def create_invoice(
        cls: Any,
        customer: Any = None,
        subscription: Any = None,
        pending_invoice_items_behavior: Any = None,
        auto_advance: Any = None,
        collection_method: Any = None,
        days_until_due: Any = None,
        description: Any = None,
        metadata: Any = None,
        **kwargs: Any,
    ) -> Any:
        if subscription is not None or kwargs:
            return original_create(
                cls,
                customer=customer,
                subscription=subscription,
                description=description,
                metadata=metadata,
                pending_invoice_items_behavior=pending_invoice_items_behavior,
                **kwargs,
            )
        if pending_invoice_items_behavior not in (None, "include", "exclude"):
            raise UserError(400, "Bad request")
        pending = [
            ii for ii in InvoiceItem._api_list_all(None, customer=customer, limit=99)._list if ii.invoice is None
        ]
        invoice = cls(customer=customer, description=description, metadata=metadata)
        if pending_invoice_items_behavior == "exclude":
            for item in pending:
                item.invoice = None
            invoice.lines._list = []
        invoice.collection_method = collection_method or "charge_automatically"
        invoice.auto_advance = str(auto_advance).lower() != "false"
        return invoice

    Invoice._api_create = classmethod(create_invoice)  # type: ignore[method-assign]

    original_item_init = InvoiceItem.__init__

    def item_init(self: Any, *args: Any, period: Any = None, **kwargs: Any) -> None:
        if isinstance(period, dict):
            kwargs["period_start"], kwargs["period_end"] = period.get("start"), period.get("end")
        invoice_id = kwargs.get("invoice")
        invoice = Invoice._api_retrieve(invoice_id) if isinstance(invoice_id, str) else None
        if invoice is not None and invoice.status != "draft":
            raise UserError(400, "Invoice items can only be added to draft invoices")
        original_item_init(self, *args, **kwargs)
        if invoice is not None:
            invoice.lines._list.append(InvoiceLineItem(self))
            invoice.currency = self.currency

    InvoiceItem.__init__ = item_init  # type: ignore[method-assign]

    def finalize(id: str, auto_advance: Any = None, **kwargs: Any) -> Any:
        invoice = Invoice._api_retrieve(id)
        if invoice.status != "draft":
            raise UserError(400, "This invoice is already finalized")
        invoice._finalize()
        schedule_webhook(Event("invoice.finalized", invoice))
        if invoice.total <= 0:
            invoice._on_payment_success()
        return invoice

    extra_apis.append(("POST", "/v1/invoices/{id}/finalize", finalize))

    original_success = Invoice._on_payment_success

    def on_success(self: Any) -> None:
        original_success(self)
        schedule_webhook(Event("invoice.paid", self))

    Invoice._on_payment_success = on_success  # type: ignore[method-assign]

    from localstripe import server  # registers the routes, extra ones included

    replays: dict[tuple[str, str], tuple[str, int, bytes, str]] = {}

    @web.middleware
    async def idempotency(request: web.Request, handler: Any) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key:
            return await handler(request)
        body = await request.read()
        fingerprint = hashlib.sha256(request.path.encode() + b"\0" + body).hexdigest()
        slot = (request.headers.get("Authorization", ""), key)
        if slot in replays:
            known, status, payload, content_type = replays[slot]
            if known != fingerprint:
                return web.json_response(
                    {
                        "error": {
                            "type": "idempotency_error",
                            "message": "Keys for idempotent requests can only be used with the same parameters.",
                        }
                    },
                    status=400,
                )
            return web.Response(
                body=payload,
                status=status,
                content_type=content_type,
                headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
            )
        response = await handler(request)
        if isinstance(response, web.Response) and response.status < 500:
            replays[slot] = (fingerprint, response.status, response.body or b"", response.content_type)
        return response

    server.app.middlewares.insert(2, idempotency)
    return server.app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from aiohttp import web

    app = _patch()
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


class LocalStripe:
    """A localstripe process of the test's own; ``url`` is its API base."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalStripe:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.localstripe_server", "--port", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"localstripe exited with status {self.process.returncode}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("localstripe did not start within 15 s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    main()
