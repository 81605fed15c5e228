"""One register, "usted": no text the clinic can receive speaks to it as "tú"."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from backup_pipeline.archive import zipper
from backup_pipeline.datasets import DATASETS, anamnesis, invoices
from backup_pipeline.datasets.base import Column
from backup_pipeline.datasets.missing import MISSING_COLUMNS, MISSING_KIND_LABELS
from backup_pipeline.datasets.workbook import overflow_pointer
from backup_pipeline.rules import cfdi, checks, emails, leeme, quota
from backup_pipeline.rules.leeme import LeemeFacts, PartNoteFacts, leeme_text, part_note_text
from backup_pipeline.rules.request_state import Requester
from backup_pipeline.services import failures, support_actions
from backup_pipeline_tests.support.register import tu_forms


@pytest.mark.parametrize(
    "text",
    [
        "El respaldo que solicitaste ya está listo.",
        "Puedes descargarlo con el siguiente enlace.",
        "Ya hay un respaldo en proceso; recibirás un solo correo.",
        "Podrás solicitar el siguiente a partir del lunes.",
        "Si tienes dudas, comunícate con soporte.",
        "¿Necesitas ayuda? Escríbenos.",
        "Descárgalo y guárdalo en un lugar seguro.",
        "Abre la Terminal y escribe: shasum",
        "Cuida esta información.",
        "Los datos de tus pacientes.",
        "Te recomendamos descargarlo.",
    ],
)
def test_the_scan_finds_tu_forms(text: str) -> None:
    assert tu_forms(text)


@pytest.mark.parametrize(
    "text",
    [
        "El respaldo que solicitó ya está listo. Puede descargarlo con el siguiente enlace.",
        "Si tiene dudas, comuníquese con el equipo de soporte.",
        "Descárguelo y guárdelo en un lugar seguro; le recomendamos hacerlo pronto.",
        "Abra la Terminal y escriba: shasum. Cambie archivo.zip por el nombre.",
        "El archivo indica cuáles son. Si el archivo no existe, consiste en un error.",
        "Recibirá un solo correo. Podrá solicitar el siguiente. Escríbanos atrás.",
        "¿Usa hilo dental? ¿Está embarazada?",
    ],
)
def test_the_scan_has_no_false_positive_on_usted_text(text: str) -> None:
    assert tu_forms(text) == []


# --- Every text the clinic can receive -------------------------------------------------------


def _emails() -> Iterator[tuple[str, str]]:
    common = {
        "to": "ana@example.mx",
        "clinic_name": "",  # the fallback name is scanned too
        "support_email": "soporte@clinica.example",
        "from_email": "respaldos@clinica.example",
        "request_id": 42,
    }
    delivered = emails.delivered_email(
        **common,
        link="https://example.test/42.zip",
        expires_at_local=datetime(2026, 11, 28, 14, 30, tzinfo=ZoneInfo("America/Cancun")),
        timezone_label="America/Cancun",
        size_bytes=12_900_000,
        sha256="0" * 64,
        contents=[("Pacientes", 1234)],
    )
    in_parts = emails.delivered_email(
        **common,
        link="https://example.test/42-1.zip",
        expires_at_local=datetime(2026, 11, 28, 14, 30, tzinfo=ZoneInfo("America/Cancun")),
        timezone_label="America/Cancun",
        size_bytes=8_000_000_000,
        sha256="0" * 64,
        contents=[("Pacientes", 1234)],
        parts=[
            emails.PartLink(
                f"https://example.test/42-{i}.zip", f"r_parte-{i}-de-2.zip", 10, "1" * 64
            )
            for i in (1, 2)
        ],
    )
    failed = emails.failed_email_to_requester(**common)
    for email in (delivered, in_parts, failed):
        yield f"{email.key} subject", email.subject
        yield f"{email.key} text", email.text
        yield f"{email.key} html", email.html


def _leeme() -> Iterator[tuple[str, str]]:
    facts = LeemeFacts(
        clinic_name="Clínica",
        generated_at_local=datetime(2026, 1, 2, 9, 30, tzinfo=ZoneInfo("America/Mexico_City")),
        timezone="America/Mexico_City",
        workbooks=[(d.archive_path, d.description, 3) for d in DATASETS],
        files_copied=5,
        file_bytes=2048,
        missing_count=2,
        invoices_issued=1,
        invoices_received=1,
        long_text_files=1,
    )
    yield "LEEME.txt", leeme_text(facts)
    in_parts = replace(facts, part=1, parts=3, part_summaries=["Parte 1 de 3: ...", "Parte 2"])
    yield "LEEME.txt of an archive in parts", leeme_text(in_parts)
    note = PartNoteFacts(
        clinic_name="Clínica",
        generated_at_local=facts.generated_at_local,
        timezone=facts.timezone,
        part=2,
        parts=3,
        files_copied=1,
        file_bytes=2048,
    )
    yield "LEEME-parte-02-de-03.txt", part_note_text(note)


def _status_details() -> Iterator[tuple[str, str]]:
    request = checks.RequestUnderReview(
        id=100, subscription_id=7, requested_by_user_id=3, requested_at=datetime(2027, 3, 1)
    )
    ok = Requester(id=3, subscription_id=7, is_active=True, can_request_backup=True)
    cases = {
        "not in subscription": {"requester": None},
        "inactive subscription": {"subscription_status": "suspended"},
        "inactive requester": {"requester": Requester(3, 7, False, True)},
        "not authorised": {"requester": Requester(3, 7, True, False)},
        "in progress": {"other_open": [(99, "pending")]},
        "quota": {
            "history": [
                quota.PastRequest(requested_at=datetime(2027, 1, 16, 18), status="delivered")
            ]
        },
    }
    for name, overrides in cases.items():
        arguments = {
            "requester": ok,
            "subscription_status": "active",
            "timezone": "America/Mexico_City",
            "history": [],
            "other_open": [],
            **overrides,
        }
        decision = checks.review_request(request, **arguments)
        assert decision.status_detail, name
        yield f"status detail: {name}", decision.status_detail
        if decision.reason_code != checks.BACKUP_IN_PROGRESS and name != "quota":
            yield f"status detail, revoked: {name}", checks.revoked_detail(decision)
    steps = [None, "deliver_backup", "assemble_backup", *(f"export_{d.name}" for d in DATASETS)]
    for step in steps:
        yield f"status detail: failed at {step}", failures.failure_reason(step, "OSError")
    yield "status detail: cancelled", failures.failure_reason(None, "RunCanceled")
    yield "status detail: refused by support", support_actions.REFUSED_BY_SUPPORT


def _workbook_texts() -> Iterator[tuple[str, str]]:
    columns: list[Column] = [
        *MISSING_COLUMNS,
        *anamnesis.QUESTION_COLUMNS,
        anamnesis.LAST_ANSWER_COLUMN,
        *invoices._columns(with_pdf=True),
    ]
    for dataset in DATASETS:
        yield f"{dataset.name} sheet", dataset.sheet_title
        yield f"{dataset.name} description", dataset.description
        columns += list(getattr(dataset, "columns", ()))
    for column in columns:
        yield f"header {column.key}", column.header
    yield "anamnesis questions sheet", anamnesis.QUESTIONS_SHEET
    yield "anamnesis answer types", " ".join(anamnesis.ANSWER_TYPE_LABELS.values())
    yield "missing kinds", " ".join(MISSING_KIND_LABELS.values())
    yield "missing reasons", f"{zipper.REASON_NOT_FOUND}. {zipper.REASON_UNREADABLE}."
    yield "email contents", f"{leeme.FILES_COPIED_LABEL}. {leeme.FILES_MISSING_LABEL}."
    yield "long text", overflow_pointer("textos_largos/consultas/consulta_1_notas.txt", "x")
    problems = [value for name, value in vars(cfdi).items() if name.startswith("PROBLEM_")]
    yield "cfdi observations", ". ".join([*problems, invoices.PROBLEM_XML_MISSING])


CLINIC_TEXTS = [*_emails(), *_leeme(), *_status_details(), *_workbook_texts()]


@pytest.mark.parametrize(("where", "text"), CLINIC_TEXTS, ids=[w for w, _ in CLINIC_TEXTS])
def test_every_text_the_clinic_receives_says_usted(where: str, text: str) -> None:
    assert tu_forms(text) == [], where
