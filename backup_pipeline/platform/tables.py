"""SQLAlchemy Core tables: the platform's database (mirrors shared/platform/schema.sql) and our own."""

from __future__ import annotations

from sqlalchemy import (
    TIMESTAMP,
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    text,
)

metadata = MetaData()


def _platform_id() -> Column:
    # schema.sql says "id BIGINT PRIMARY KEY" without NOT NULL; SQLite takes that literally (its
    # primary keys admit NULL unless declared NOT NULL), so nullable=True mirrors it exactly there,
    # while PostgreSQL makes every primary key NOT NULL either way.
    return Column("id", BigInteger, primary_key=True, autoincrement=False, nullable=True)


subscriptions = Table(
    "subscriptions",
    metadata,
    _platform_id(),
    Column("name", Text, nullable=False),
    Column("legal_name", Text),
    Column("rfc", Text),
    Column("timezone", Text, nullable=False, server_default=text("'America/Mexico_City'")),
    Column("status", Text, nullable=False),
    Column("created_at", TIMESTAMP, nullable=False),
)

users = Table(
    "users",
    metadata,
    _platform_id(),
    Column("subscription_id", BigInteger, ForeignKey("subscriptions.id"), nullable=False),
    Column("email", Text, nullable=False),
    Column("full_name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("is_active", Boolean, nullable=False),
    Column("can_request_backup", Boolean, nullable=False),
    Column("created_at", TIMESTAMP, nullable=False),
)

patients = Table(
    "patients",
    metadata,
    _platform_id(),
    Column("subscription_id", BigInteger, ForeignKey("subscriptions.id"), nullable=False),
    Column("first_name", Text, nullable=False),
    Column("last_name", Text),
    Column("second_last_name", Text),
    Column("birth_date", Date),
    Column("sex", Text),
    Column("curp", Text),
    Column("rfc", Text),
    Column("email", Text),
    Column("phone", Text),
    Column("mobile", Text),
    Column("street", Text),
    Column("exterior_number", Text),
    Column("interior_number", Text),
    Column("neighborhood", Text),
    Column("municipality", Text),
    Column("state", Text),
    Column("postal_code", Text),
    Column("country", Text),
    Column("tax_regime", Text),
    Column("tax_postal_code", Text),
    Column("blood_type", Text),
    Column("allergies", Text),
    Column("notes", Text),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("updated_at", TIMESTAMP),
    Column("deleted_at", TIMESTAMP),
)

anamnesis_questions = Table(
    "anamnesis_questions",
    metadata,
    _platform_id(),
    Column("subscription_id", BigInteger, ForeignKey("subscriptions.id"), nullable=False),
    Column("section", Text),
    Column("position", Integer, nullable=False),
    Column("question", Text, nullable=False),
    Column("answer_type", Text, nullable=False),
    Column("is_active", Boolean, nullable=False),
)

anamnesis_answers = Table(
    "anamnesis_answers",
    metadata,
    _platform_id(),
    Column("subscription_id", BigInteger, ForeignKey("subscriptions.id"), nullable=False),
    Column("patient_id", BigInteger, ForeignKey("patients.id"), nullable=False),
    Column("question_id", BigInteger, ForeignKey("anamnesis_questions.id"), nullable=False),
    Column("answer", Text),
    Column("answered_at", TIMESTAMP, nullable=False),
)

consultations = Table(
    "consultations",
    metadata,
    _platform_id(),
    Column("subscription_id", BigInteger, ForeignKey("subscriptions.id"), nullable=False),
    Column("patient_id", BigInteger, ForeignKey("patients.id"), nullable=False),
    Column("practitioner_user_id", BigInteger, ForeignKey("users.id")),
    Column("started_at", TIMESTAMP, nullable=False),
    Column("reason", Text),
    Column("current_illness", Text),
    Column("physical_exam", Text),
    Column("diagnosis_code", Text),
    Column("diagnosis", Text),
    Column("prognosis", Text),
    Column("treatment_plan", Text),
    Column("notes", Text),
    Column("weight_kg", Numeric(6, 2)),
    Column("height_cm", Numeric(5, 1)),
    Column("temperature_c", Numeric(4, 1)),
    Column("systolic_bp", Integer),
    Column("diastolic_bp", Integer),
    Column("heart_rate", Integer),
    Column("respiratory_rate", Integer),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("deleted_at", TIMESTAMP),
)

dental_treatments = Table(
    "dental_treatments",
    metadata,
    _platform_id(),
    Column("subscription_id", BigInteger, ForeignKey("subscriptions.id"), nullable=False),
    Column("patient_id", BigInteger, ForeignKey("patients.id"), nullable=False),
    Column("consultation_id", BigInteger, ForeignKey("consultations.id")),
    Column("tooth_fdi", Integer),
    Column("surfaces", Text),
    Column("procedure_code", Text),
    Column("procedure_name", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("price", Numeric(12, 2)),
    Column("currency", Text, nullable=False, server_default=text("'MXN'")),
    Column("planned_on", Date),
    Column("completed_on", Date),
    Column("notes", Text),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("deleted_at", TIMESTAMP),
)

vaccinations = Table(
    "vaccinations",
    metadata,
    _platform_id(),
    Column("subscription_id", BigInteger, ForeignKey("subscriptions.id"), nullable=False),
    Column("patient_id", BigInteger, ForeignKey("patients.id"), nullable=False),
    Column("vaccine", Text, nullable=False),
    Column("dose", Text),
    Column("applied_on", Date, nullable=False),
    Column("lot_number", Text),
    Column("manufacturer", Text),
    Column("site", Text),
    Column("applied_by", Text),
    Column("next_dose_on", Date),
    Column("notes", Text),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("deleted_at", TIMESTAMP),
)

attachments = Table(
    "attachments",
    metadata,
    _platform_id(),
    Column("subscription_id", BigInteger, ForeignKey("subscriptions.id"), nullable=False),
    Column("patient_id", BigInteger, ForeignKey("patients.id"), nullable=False),
    Column("storage_key", Text, nullable=False),
    Column("file_name", Text, nullable=False),
    Column("content_type", Text),
    Column("size_bytes", BigInteger),
    Column("sha256", Text),
    Column("uploaded_at", TIMESTAMP, nullable=False),
    Column("deleted_at", TIMESTAMP),
)

cfdi_documents = Table(
    "cfdi_documents",
    metadata,
    _platform_id(),
    Column("subscription_id", BigInteger, ForeignKey("subscriptions.id"), nullable=False),
    Column("direction", Text, nullable=False),
    Column("uuid", Text, nullable=False),
    Column("xml_storage_key", Text, nullable=False),
    Column("pdf_storage_key", Text),
    Column("issued_at", TIMESTAMP),
    Column("status", Text, nullable=False),
    Column("cancelled_at", TIMESTAMP),
    Column("patient_id", BigInteger, ForeignKey("patients.id")),
    Column("created_at", TIMESTAMP, nullable=False),
)

backup_requests = Table(
    "backup_requests",
    metadata,
    _platform_id(),
    Column("subscription_id", BigInteger, ForeignKey("subscriptions.id"), nullable=False),
    Column("requested_by_user_id", BigInteger, ForeignKey("users.id"), nullable=False),
    Column("requested_at", TIMESTAMP, nullable=False),
    Column("status", Text, nullable=False),
    Column("status_detail", Text),
    Column("started_at", TIMESTAMP),
    Column("finished_at", TIMESTAMP),
    Column("archive_key", Text),
    Column("archive_size_bytes", BigInteger),
    Column("archive_sha256", Text),
    Column("link_expires_at", TIMESTAMP),
    Column("email_sent_at", TIMESTAMP),
    Column("email_message_id", Text),
    Column("run_id", Text),
)

Index("ix_patients_subscription", patients.c.subscription_id)
Index(
    "ix_anamnesis_answers_subscription",
    anamnesis_answers.c.subscription_id,
    anamnesis_answers.c.patient_id,
)
Index("ix_consultations_subscription", consultations.c.subscription_id)
Index("ix_dental_treatments_subscription", dental_treatments.c.subscription_id)
Index("ix_vaccinations_subscription", vaccinations.c.subscription_id)
Index("ix_attachments_subscription", attachments.c.subscription_id, attachments.c.patient_id)
Index(
    "ix_cfdi_documents_subscription", cfdi_documents.c.subscription_id, cfdi_documents.c.direction
)
Index("ix_backup_requests_status", backup_requests.c.status, backup_requests.c.requested_at)
Index(
    "ix_backup_requests_subscription",
    backup_requests.c.subscription_id,
    backup_requests.c.requested_at,
)

PLATFORM_TABLES = tuple(metadata.sorted_tables)

# --- Our own tables (PRODUCT.md: we may write tables named backup_*) -------------------------

backup_quota_windows = Table(
    "backup_quota_windows",
    metadata,
    Column("subscription_id", BigInteger, primary_key=True, autoincrement=False),
    Column("last_counted_backup_at", TIMESTAMP),
    Column("next_allowed_at", TIMESTAMP),
    Column("backups_last_360_days", Integer, nullable=False),
    Column("updated_at", TIMESTAMP, nullable=False),
)

backup_alerts = Table(
    "backup_alerts",
    metadata,
    # One row per (request, kind) alert sent, so that an alert goes out once however often
    # the schedule that looks for it ticks.
    Column("request_id", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", Text, primary_key=True),
    Column("sent_at", TIMESTAMP, nullable=False),
)


backup_request_reviews = Table(
    "backup_request_reviews",
    metadata,
    # The sensor's decision on each request, so that a request accepted and waiting in the run
    # queue (still 'pending' in backup_requests) is not reviewed again on every tick.
    Column("request_id", BigInteger, primary_key=True, autoincrement=False),
    Column("decision", Text, nullable=False),  # 'accepted' | 'rejected'
    Column("reason_code", Text),
    Column("run_key", Text),
    Column("reviewed_at", TIMESTAMP, nullable=False),
)

backup_request_events = Table(
    "backup_request_events",
    metadata,
    # The audit trail (PRODUCT.md): append-only, one row per change of a request's state, written
    # in the transaction that makes the change. Ids and words only, never patient data.
    Column(
        "id",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("request_id", BigInteger, nullable=False),
    Column("subscription_id", BigInteger, nullable=False),
    Column("occurred_at", TIMESTAMP, nullable=False),
    Column("event", Text, nullable=False),  # request_state.RequestEvent
    Column("actor", Text, nullable=False),  # 'sensor' | 'run' | 'support' | 'housekeeping'
    Column("run_id", Text),  # the run that made the change, or that support acted on
    Column("reason", Text),  # support's stated reason
    Column("detail", Text),  # e.g. a rejection's reason code, a quota override
)
Index(
    "ix_backup_request_events_request",
    backup_request_events.c.request_id,
    backup_request_events.c.id,
)

backup_archive_parts = Table(
    "backup_archive_parts",
    metadata,
    # Every zip of a request's archive. backup_requests holds the first part's key and checksum
    # and the total size; an archive of one part has one row here too.
    Column("request_id", BigInteger, primary_key=True, autoincrement=False),
    Column("part", Integer, primary_key=True, autoincrement=False),  # 1-based
    Column("parts", Integer, nullable=False),
    Column("archive_key", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", Text, nullable=False),
)

backup_archive_contents = Table(
    "backup_archive_contents",
    metadata,
    # What the delivered archive contains, as its email lists it (Spanish label, count), so that
    # a re-sent link's email says the same as the first. Labels and counts only, no names.
    Column("request_id", BigInteger, primary_key=True, autoincrement=False),
    Column("position", Integer, primary_key=True, autoincrement=False),  # the email's order
    Column("label", Text, nullable=False),
    Column("count", BigInteger, nullable=False),
)

OUR_TABLES = (
    backup_quota_windows,
    backup_alerts,
    backup_request_reviews,
    backup_request_events,
    backup_archive_parts,
    backup_archive_contents,
)
