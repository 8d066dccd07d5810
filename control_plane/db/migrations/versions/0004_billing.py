"""Billing: usage records, subscriptions, invoices and their lines, credit notes, payment events.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kernel.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "billing_accounts",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("tax_rate_bp", sa.Integer(), nullable=False),
        sa.Column("billing_email", sa.String(length=320), nullable=True),
        sa.Column("customer_ref", sa.String(length=80), nullable=True),
        sa.Column("created_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_billing_accounts")),
    )
    with op.batch_alter_table("billing_accounts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_billing_accounts_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "billing_invoices",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("plan", sa.String(length=40), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("period_start", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("period_end", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("subtotal", sa.BigInteger(), nullable=False),
        sa.Column("tax_rate_bp", sa.Integer(), nullable=False),
        sa.Column("tax", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("credited", sa.BigInteger(), nullable=False),
        sa.Column("finalize_after", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("rated_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finalized_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("paid_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("voided_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("uncollectible_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("payment_driver", sa.String(length=20), nullable=True),
        sa.Column("payment_ref", sa.String(length=80), nullable=True),
        sa.Column("payment_state", sa.String(length=20), nullable=False),
        sa.Column("push_attempts", sa.Integer(), nullable=False),
        sa.Column("next_push_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_push_error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "payment_state IN ('none', 'pending', 'pushed')", name=op.f("ck_billing_invoices_payment_state")
        ),
        sa.CheckConstraint(
            "status IN ('draft', 'finalised', 'paid', 'void', 'uncollectible')", name=op.f("ck_billing_invoices_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_invoices")),
        sa.UniqueConstraint("number", name=op.f("uq_billing_invoices_number")),
        sa.UniqueConstraint("tenant_id", "period_start", name="uq_billing_invoices_tenant_period"),
    )
    with op.batch_alter_table("billing_invoices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_billing_invoices_payment_ref"), ["payment_ref"], unique=False)
        batch_op.create_index("ix_billing_invoices_period", ["period_start", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_billing_invoices_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_billing_invoices_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "billing_payment_events",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("type", sa.String(length=80), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("received_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("processed_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_payment_events")),
    )
    op.create_table(
        "billing_quota_warnings",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("period_start", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("meter", sa.String(length=60), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("sent_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant_id", "period_start", "meter", "threshold", name=op.f("pk_billing_quota_warnings")
        ),
    )
    with op.batch_alter_table("billing_quota_warnings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_billing_quota_warnings_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "billing_sequences",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("last_value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_billing_sequences")),
    )
    op.create_table(
        "billing_subscriptions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("plan", sa.String(length=40), nullable=False),
        sa.Column("started_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("trial_ends_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_subscriptions")),
    )
    with op.batch_alter_table("billing_subscriptions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_billing_subscriptions_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "billing_usage_keys",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("metric", sa.String(length=60), nullable=False),
        sa.Column("period_start", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("last_seen", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("received_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "metric", "period_start", "key", name=op.f("pk_billing_usage_keys")),
    )
    with op.batch_alter_table("billing_usage_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_billing_usage_keys_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "billing_usage_records",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("cell_id", sa.String(length=80), nullable=False),
        sa.Column("metric", sa.String(length=60), nullable=False),
        sa.Column("timestamp", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("period_start", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("key_count", sa.Integer(), nullable=False),
        sa.Column("received_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_usage_records")),
    )
    with op.batch_alter_table("billing_usage_records", schema=None) as batch_op:
        batch_op.create_index("ix_billing_usage_records_period", ["tenant_id", "metric", "period_start"], unique=False)
        batch_op.create_index(batch_op.f("ix_billing_usage_records_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "billing_credit_notes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("invoice_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=True),
        sa.Column("created_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["billing_invoices.id"], name=op.f("fk_billing_credit_notes_invoice_id_billing_invoices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_credit_notes")),
        sa.UniqueConstraint("number", name=op.f("uq_billing_credit_notes_number")),
    )
    with op.batch_alter_table("billing_credit_notes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_billing_credit_notes_invoice_id"), ["invoice_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_billing_credit_notes_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "billing_invoice_lines",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("invoice_id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("description", sa.String(length=300), nullable=False),
        sa.Column("meter", sa.String(length=60), nullable=True),
        sa.Column("usage_period_start", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("included", sa.BigInteger(), nullable=False),
        sa.Column("billable", sa.BigInteger(), nullable=False),
        sa.Column("unit_amount", sa.BigInteger(), nullable=True),
        sa.Column("unit_size", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("tiers", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["billing_invoices.id"],
            name=op.f("fk_billing_invoice_lines_invoice_id_billing_invoices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_invoice_lines")),
    )
    with op.batch_alter_table("billing_invoice_lines", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_billing_invoice_lines_invoice_id"), ["invoice_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_billing_invoice_lines_tenant_id"), ["tenant_id"], unique=False)
    op.execute(sa.text("INSERT INTO billing_sequences (name, last_value) VALUES ('invoice', 0), ('credit_note', 0)"))
    _create_immutability_triggers()


# What a finalised invoice may never change again (status, payment fields and `credited` may).
FROZEN = (
    "number",
    "tenant_id",
    "plan",
    "currency",
    "period_start",
    "period_end",
    "subtotal",
    "tax_rate_bp",
    "tax",
    "total",
    "finalized_at",
)
MESSAGE = "finalised invoices are immutable"


def _create_immutability_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in FROZEN)
        op.execute(
            "CREATE FUNCTION billing_invoice_frozen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF TG_OP = 'DELETE' AND OLD.status <> 'draft' THEN RAISE EXCEPTION '{MESSAGE}'; END IF; "
            f"IF TG_OP = 'UPDATE' AND OLD.status <> 'draft' AND ({changed}) THEN RAISE EXCEPTION '{MESSAGE}'; END IF; "
            "IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END $$"
        )
        op.execute(
            "CREATE TRIGGER billing_invoice_frozen BEFORE UPDATE OR DELETE ON billing_invoices "
            "FOR EACH ROW EXECUTE FUNCTION billing_invoice_frozen()"
        )
        op.execute(
            "CREATE FUNCTION billing_invoice_lines_frozen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF (SELECT status FROM billing_invoices WHERE id = "
            "CASE WHEN TG_OP = 'INSERT' THEN NEW.invoice_id ELSE OLD.invoice_id END) <> 'draft' "
            f"THEN RAISE EXCEPTION '{MESSAGE}'; END IF; "
            "IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END $$"
        )
        op.execute(
            "CREATE TRIGGER billing_invoice_lines_frozen BEFORE INSERT OR UPDATE OR DELETE ON billing_invoice_lines "
            "FOR EACH ROW EXECUTE FUNCTION billing_invoice_lines_frozen()"
        )
        return
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in FROZEN)
    op.execute(
        "CREATE TRIGGER billing_invoice_frozen_update BEFORE UPDATE ON billing_invoices "
        f"WHEN OLD.status <> 'draft' AND ({changed}) BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
    )
    op.execute(
        "CREATE TRIGGER billing_invoice_frozen_delete BEFORE DELETE ON billing_invoices "
        f"WHEN OLD.status <> 'draft' BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
    )
    for verb, row in (("INSERT", "NEW"), ("UPDATE", "OLD"), ("DELETE", "OLD")):
        op.execute(
            f"CREATE TRIGGER billing_invoice_lines_frozen_{verb.lower()} BEFORE {verb} ON billing_invoice_lines "
            f"WHEN (SELECT status FROM billing_invoices WHERE id = {row}.invoice_id) <> 'draft' "
            f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
        )


def _drop_immutability_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER billing_invoice_lines_frozen ON billing_invoice_lines")
        op.execute("DROP FUNCTION billing_invoice_lines_frozen()")
        op.execute("DROP TRIGGER billing_invoice_frozen ON billing_invoices")
        op.execute("DROP FUNCTION billing_invoice_frozen()")
        return
    for name in ("frozen_update", "frozen_delete"):
        op.execute(f"DROP TRIGGER billing_invoice_{name}")
    for verb in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER billing_invoice_lines_frozen_{verb}")


def downgrade() -> None:
    _drop_immutability_triggers()
    with op.batch_alter_table("billing_invoice_lines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_invoice_lines_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_billing_invoice_lines_invoice_id"))

    op.drop_table("billing_invoice_lines")
    with op.batch_alter_table("billing_credit_notes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_credit_notes_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_billing_credit_notes_invoice_id"))

    op.drop_table("billing_credit_notes")
    with op.batch_alter_table("billing_usage_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_usage_records_tenant_id"))
        batch_op.drop_index("ix_billing_usage_records_period")

    op.drop_table("billing_usage_records")
    with op.batch_alter_table("billing_usage_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_usage_keys_tenant_id"))

    op.drop_table("billing_usage_keys")
    with op.batch_alter_table("billing_subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_subscriptions_tenant_id"))

    op.drop_table("billing_subscriptions")
    op.drop_table("billing_sequences")
    with op.batch_alter_table("billing_quota_warnings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_quota_warnings_tenant_id"))

    op.drop_table("billing_quota_warnings")
    op.drop_table("billing_payment_events")
    with op.batch_alter_table("billing_invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_invoices_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_billing_invoices_status"))
        batch_op.drop_index("ix_billing_invoices_period")
        batch_op.drop_index(batch_op.f("ix_billing_invoices_payment_ref"))

    op.drop_table("billing_invoices")
    with op.batch_alter_table("billing_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_accounts_tenant_id"))

    op.drop_table("billing_accounts")
