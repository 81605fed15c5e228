"""Every text the clinic reads agrees with its counts by CLDR's es_MX plural rules: "1 archivo
adjunto", "0 archivos", "1,000,000 archivos", never "1 archivo adjuntos" or "2 archivo"."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from backup_pipeline.datasets.workbook import overflow_pointer
from backup_pipeline.rules import checks, quota
from backup_pipeline.rules.emails import PartLink, delivered_email, failed_email_to_requester
from backup_pipeline.rules.leeme import LeemeFacts, PartNoteFacts, leeme_text, part_note_text
from backup_pipeline.rules.request_state import Requester
from backup_pipeline.rules.spanish import plural_category, spanish_count
from backup_pipeline.services.archive import part_summary
from backup_pipeline.services.failures import failure_reason
from backup_pipeline.services.support_actions import REFUSED_BY_SUPPORT

COUNTS = (0, 1, 2, 1000, 1_000_000)
ZONE = "America/Mexico_City"
AT = datetime(2027, 3, 1, 18, 0)
SHA = "ab" * 32

# A count as the clinic reads it (CLDR es_MX groups with commas), followed by the words after it.
# A decimal ("12.3 MB"), a time ("10:05") or a date's year ("2027.") is not a count of things,
# nor is a word that is the start of a file name ("shasum -a 256 archivo.zip").
COUNTED = re.compile(
    r"(?<![\w.,:/-])(\d{1,3}(?:,\d{3})*)(?=[ \n])((?:[ \n]+[^\W\d_]++(?!\.\w)){1,2})",
)
# Words after a number that are not what it counts: "1 de los 2 respaldos", "15 de julio".
NOT_COUNTED_WORDS = frozenset({"de", "del", "en", "y", "o", "a", "al", "que", "se", "no"})
# Singular words that end in "s" (none yet in our texts; listed when one appears).
SINGULAR_IN_S: frozenset[str] = frozenset()


# A verb in the preterite right before a count agrees with it too: "se copió 1", "se copiaron 2".
PRETERITE_THEN_COUNT = re.compile(r"\b([^\W\d_]+?(ó|aron|ieron)) (\d{1,3}(?:,\d{3})*)(?=[ \n])")


def disagreements(text: str) -> list[str]:
    """Each "<count> <word> [<word>]" whose nouns and adjectives do not agree with the count.

    The words after the count up to the first function word are what it counts ("1 archivo
    adjunto o de facturación" checks "archivo adjunto"). For CLDR "one" none may be plural; for
    "other" and "many" the first must be.
    """
    found = []
    for match in COUNTED.finditer(text):
        number = int(match.group(1).replace(",", ""))
        words = []
        for word in match.group(2).split():
            if word in NOT_COUNTED_WORDS or not word.islower():
                break  # a function word, or a unit written in capitals ("MB", "kB")
            words.append(word)
        if not words:
            continue
        plural = [w.endswith("s") and w not in SINGULAR_IN_S for w in words]
        category = plural_category(number)
        if (category == "one" and any(plural)) or (category != "one" and not plural[0]):
            found.append(f"{match.group(1)} {' '.join(words)}")
    for match in PRETERITE_THEN_COUNT.finditer(text):
        one = plural_category(int(match.group(3).replace(",", ""))) == "one"
        if one != (match.group(2) == "ó"):
            found.append(f"{match.group(1)} {match.group(3)}")
    return found


def test_the_checker_catches_what_it_is_for():
    assert disagreements("En total se copiaron 1 archivo adjuntos y de facturación.") == [
        "1 archivo adjuntos",
        "copiaron 1",
    ]
    assert disagreements("Hay 2 archivo.") == ["2 archivo"]
    assert disagreements("se copiaron 1 comprobante y se copió 2 archivos") == [
        "copiaron 1",
        "copió 2",
    ]
    assert disagreements("Hay 1,000,000 registro.") == ["1,000,000 registro"]
    assert (
        disagreements("1 archivo adjunto o de facturación; 0 archivos; 1 de los 2 respaldos") == []
    )
    assert disagreements("pesa 12.3 MB, el 15 de julio de 2027, 10:05, hora central") == []
    assert disagreements("escriba: shasum -a 256 archivo.zip") == []


def test_cldr_plural_categories_for_es_mx_as_babel_gives_them():
    # "many" is CLDR's category for a multiple of a million ("1 millón de archivos"); written in
    # figures the noun follows the number, so it takes the plural word like "other".
    assert [plural_category(n) for n in COUNTS] == ["other", "one", "other", "other", "many"]
    assert spanish_count(1_000_000, "archivo", "archivos") == "1,000,000 archivos"
    assert spanish_count(1, "archivo adjunto", "archivos adjuntos") == "1 archivo adjunto"


# --- Every text the clinic reads, rendered with every count ---------------------------------


def _emails(n: int) -> Iterator[tuple[str, str]]:
    contents = [
        ("Pacientes", n),
        ("Consultas", n),
        ("Archivos adjuntos y comprobantes copiados", n),
    ]
    common = dict(
        to="dueno@clinica.example",
        clinic_name="Clínica Dental",
        expires_at_local=datetime(2027, 3, 4, 12, 0),
        timezone_label=ZONE,
        support_email="soporte@clinica.example",
        from_email="respaldos@clinica.example",
        request_id=42,
    )
    # The first email and a re-sent link's are the same builder with the same contents.
    for kind in ("delivered", "resent"):
        email = delivered_email(
            link="https://example.test/a.zip",
            size_bytes=n,
            sha256=SHA,
            contents=contents,
            **common,
        )
        yield f"{kind} email", email.subject + "\n" + email.text
    # An archive in parts has at least two (capped: a million buttons say nothing more).
    parts = [
        PartLink(f"https://example.test/{i}.zip", f"respaldo-parte-{i}.zip", n, SHA)
        for i in range(1, min(max(n, 2), 1000) + 1)
    ]
    email = delivered_email(
        link=parts[0].link, size_bytes=n, sha256=SHA, contents=contents, parts=parts, **common
    )
    yield "email in parts", email.subject + "\n" + email.text
    for cancelled in (False, True):
        failed = failed_email_to_requester(
            to=common["to"],
            clinic_name="Clínica Dental",
            support_email="soporte@clinica.example",
            from_email="respaldos@clinica.example",
            request_id=42,
            cancelled=cancelled,
        )
        kind = "stopped by support" if cancelled else "failed"
        yield f"{kind} email", failed.subject + "\n" + failed.text


def _leemes(n: int) -> Iterator[tuple[str, str]]:
    facts = LeemeFacts(
        clinic_name="Clínica Dental",
        generated_at_local=datetime(2027, 3, 1, 12, 0),
        timezone=ZONE,
        workbooks=[("pacientes.xlsx", "Pacientes: datos personales y de contacto.", n)],
        files_copied=n,
        file_bytes=n,
        missing_count=n,
        invoices_issued=n,
        invoices_received=n,
        long_text_files=n,
    )
    yield "LEEME", leeme_text(facts)
    parts = min(max(n, 2), 1000)
    # Part summaries as the assembly writes them, each part holding n files.
    summaries = [part_summary(i, parts, n, n) for i in range(1, parts + 1)]
    for part in (1, 2):
        yield (
            f"LEEME of part {part}",
            leeme_text(
                LeemeFacts(
                    **{**facts.__dict__, "part": part, "parts": parts, "part_summaries": summaries}
                )
            ),
        )
    yield (
        "guide of part 2",
        part_note_text(
            PartNoteFacts(
                clinic_name=facts.clinic_name,
                generated_at_local=facts.generated_at_local,
                timezone=facts.timezone,
                part=2,
                parts=parts,
                files_copied=n,
                file_bytes=n,
            )
        ),
    )


def _status_details(n: int) -> Iterator[tuple[str, str]]:
    requester = Requester(id=3, subscription_id=7, is_active=True, can_request_backup=True)
    refusals = [
        checks.authorization_refusal(None, 7, "active"),
        checks.authorization_refusal(requester, 7, "suspended"),
        checks.authorization_refusal(
            Requester(3, 7, is_active=False, can_request_backup=True), 7, "active"
        ),
        checks.authorization_refusal(
            Requester(3, 7, is_active=True, can_request_backup=False), 7, "active"
        ),
    ]
    for refusal in refusals:
        assert refusal is not None and refusal.status_detail is not None
        yield refusal.reason_code or "", refusal.status_detail
        yield f"revoked: {refusal.reason_code}", checks.revoked_detail(refusal)
    yield "double click", checks.IN_PROGRESS_DETAIL
    histories = {
        "quota, the gap": [quota.PastRequest(AT - timedelta(days=40), "delivered")],
        "quota, the window": [
            quota.PastRequest(AT - timedelta(days=300), "expired"),
            quota.PastRequest(AT - timedelta(days=100), "delivered"),
        ],
        "quota, both": [
            quota.PastRequest(AT - timedelta(days=350), "expired"),
            quota.PastRequest(AT - timedelta(days=50), "delivered"),
        ],
    }
    for name, history in histories.items():
        refused = quota.refusal(AT, history)
        assert refused is not None
        yield name, checks.quota_detail(refused, ZONE)
    for step in (None, "export_patients", "assemble_backup", "deliver_backup"):
        yield f"failed at {step}", failure_reason(step, "RuntimeError")
    yield "cancelled", failure_reason("assemble_backup", "RunCanceled")
    yield "refused by support", REFUSED_BY_SUPPORT
    yield "workbook cell too long", overflow_pointer("textos_largos/consultas/c_1.txt", "Hola")


def _every_text(n: int) -> Iterator[tuple[str, str]]:
    yield from _emails(n)
    yield from _leemes(n)
    yield from _status_details(n)


@pytest.mark.parametrize("n", COUNTS)
def test_every_text_the_clinic_reads_agrees_with_its_counts(n):
    wrong = {name: bad for name, text in _every_text(n) if (bad := disagreements(text))}
    assert wrong == {}


@pytest.mark.parametrize("n", COUNTS)
def test_the_scan_sees_the_counts_it_checks(n):
    # A scan that matched nothing would pass for any wording: the counted texts are seen.
    texts = dict(_every_text(n))
    counted = f"{n:,}"
    assert f"{counted} registro" in texts["LEEME"]
    assert f"copiados en total: {counted} (" in texts["LEEME"]
    assert f"{counted} archivo" in texts["LEEME of part 1"]
    assert "1 de los 2 respaldos" in texts["quota, the gap"]
