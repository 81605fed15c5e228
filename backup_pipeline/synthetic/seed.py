"""Seed a platform database and its files store with deterministic synthetic clinics, streaming in batches."""

from __future__ import annotations

import hashlib
import math
import random
import uuid as uuid_module
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, Table, func, select
from sqlalchemy.exc import IntegrityError

from backup_pipeline.platform import tables
from backup_pipeline.storage import ObjectStore
from backup_pipeline.synthetic import cfdi_xml, clinical, names
from backup_pipeline.synthetic import files as file_formats
from backup_pipeline.synthetic.profiles import PROFILES, Profile

ID_BLOCK = 1_000_000_000  # every subscription owns ids [sid * ID_BLOCK, (sid + 1) * ID_BLOCK) in each table
BATCH_ROWS = 5_000
HISTORY_YEARS = 5

Row = dict[str, Any]
Progress = Callable[[str], None]


@dataclass
class SeedSummary:
    subscription_ids: list[int]
    user_ids: dict[int, list[int]]  # per subscription: active authorised users, the owner first
    counts: dict[str, int]  # rows inserted per table
    file_bytes: int  # bytes written to the files store
    # per subscription: every user id with 'owner' | 'admin' | 'staff' | 'inactive' (authorised, not active)
    user_roles: dict[int, dict[int, str]] = field(default_factory=dict)


def row_id(subscription_id: int, sequence: int) -> int:
    """The platform id of a subscription's sequence-th row of a table (sequence from 1)."""
    if not 0 < sequence < ID_BLOCK:
        raise ValueError(f"sequence {sequence} is outside 1..{ID_BLOCK - 1}")
    return subscription_id * ID_BLOCK + sequence


def seed_platform(
    engine: Engine,
    files: ObjectStore,
    *,
    profile: str = "small",
    patients: int | None = None,
    subscriptions: int = 1,
    seed: int = 0,
    first_subscription_id: int = 1,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> SeedSummary:
    """Insert `subscriptions` clinics of `profile` (scaled to `patients`) and write their files.

    The same arguments give the same rows and the same file bytes. Every id lives in its
    subscription's block (see row_id), so clinics seeded into one database never collide; seeding
    a subscription id that already exists is refused.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    chosen = PROFILES[profile]
    patient_count = chosen.patients if patients is None else patients
    if patient_count < 0 or subscriptions < 1 or first_subscription_id < 1:
        raise ValueError("patients must be >= 0, subscriptions >= 1 and first_subscription_id >= 1")
    moment = _naive_utc(now or datetime.now(UTC))
    sids = list(range(first_subscription_id, first_subscription_id + subscriptions))
    summary = SeedSummary(sids, {}, {}, 0)
    with engine.connect() as connection:
        _refuse_existing(connection, sids)
        restore = _fast_sqlite(connection)
        try:
            sink = _BatchSink(connection, BATCH_ROWS)
            for sid in sids:
                clinic = _ClinicSeeder(
                    sid=sid,
                    profile=chosen,
                    patients=patient_count,
                    seed=seed,
                    now=moment,
                    sink=sink,
                    files=files,
                    progress=progress,
                )
                clinic.run()
                summary.user_ids[sid] = clinic.authorised_user_ids
                summary.user_roles[sid] = clinic.user_roles
                summary.file_bytes += clinic.file_bytes
            sink.flush()
        finally:
            restore()
    summary.counts = {t.name: sink.counts.get(t.name, 0) for t in tables.PLATFORM_TABLES}
    return summary


def file_backup_request(
    engine: Engine, *, subscription_id: int, user_id: int, requested_at: datetime | None = None
) -> int:
    """Insert a 'pending' backup request, as the platform does when the button is clicked; its id."""
    when = _naive_utc(requested_at or datetime.now(UTC))
    low, high = subscription_id * ID_BLOCK, (subscription_id + 1) * ID_BLOCK
    table = tables.backup_requests
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                current = conn.execute(
                    select(func.max(table.c.id)).where(table.c.id >= low, table.c.id < high)
                ).scalar()
                new_id = (current or low) + 1
                conn.execute(
                    table.insert().values(
                        id=new_id,
                        subscription_id=subscription_id,
                        requested_by_user_id=user_id,
                        requested_at=when,
                        status="pending",
                    )
                )
            return new_id
        except IntegrityError:
            # Another writer took the same next id; anything else (a missing user) fails again.
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


# --- plumbing ------------------------------------------------------------------------------


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.replace(microsecond=0)


def _refuse_existing(connection: Connection, sids: Sequence[int]) -> None:
    existing = connection.execute(
        select(tables.subscriptions.c.id).where(tables.subscriptions.c.id.in_(sids))
    ).scalars()
    taken = sorted(existing)
    connection.rollback()
    if taken:
        raise ValueError(
            f"subscription ids {taken} already exist; seed from a free id "
            f"(e.g. first_subscription_id={max(taken) + 1} or higher)"
        )


def _fast_sqlite(connection: Connection) -> Callable[[], None]:
    """On SQLite, skip fsync while seeding (a crash only loses synthetic data); undo afterwards."""
    if connection.dialect.name != "sqlite":
        return lambda: None
    previous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
    connection.exec_driver_sql("PRAGMA synchronous=OFF")
    connection.commit()

    def restore() -> None:
        connection.rollback()
        connection.exec_driver_sql(f"PRAGMA synchronous={int(previous or 2)}")
        connection.commit()

    return restore


class _BatchSink:
    """Buffers rows per table; writes them all, parents first, in one transaction per batch."""

    def __init__(self, connection: Connection, batch_rows: int) -> None:
        self.connection = connection
        self.batch_rows = batch_rows
        # psycopg's COPY is several times faster than multi-row INSERTs for bulk synthetic rows.
        self.copy = (
            connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg"
        )
        self.buffers: dict[str, list[Row]] = {t.name: [] for t in tables.PLATFORM_TABLES}
        self.pending = 0
        self.counts: Counter[str] = Counter()

    def add(self, table: Table, row: Row) -> None:
        self.buffers[table.name].append(row)
        self.pending += 1
        if self.pending >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        with self.connection.begin():
            for table in tables.PLATFORM_TABLES:
                rows = self.buffers[table.name]
                if rows and self.copy:
                    self._copy(table, rows)
                elif rows:
                    self.connection.execute(table.insert(), rows)
                if rows:
                    self.counts[table.name] += len(rows)
                    self.buffers[table.name] = []
        self.pending = 0

    def _copy(self, table: Table, rows: list[Row]) -> None:
        from psycopg import sql

        columns = [c.name for c in table.columns]
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        driver_connection = self.connection.connection.driver_connection
        with driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([row.get(c) for c in columns])


class _HashingWriter:
    def __init__(self, target: Any | None) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.digest.update(data)
        self.size += len(data)
        if self.target is not None:
            self.target.write(data)
        return len(data)


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    if end <= start:
        return start
    return start + timedelta(seconds=rng.randrange(int((end - start).total_seconds()) + 1))


def _day_between(rng: random.Random, start: date, end: date) -> date:
    if end <= start:
        return start
    return start + timedelta(days=rng.randrange((end - start).days + 1))


def _age_years(birth: date | None, on: date) -> float:
    """Age on a date; an unknown birth date counts as an adult's."""
    return 40.0 if birth is None else max(0.0, (on - birth).days / 365.25)


def _growth(age: float, rng: random.Random) -> tuple[Decimal, Decimal]:
    """Weight (kg, 2 decimals) and height (cm, 1 decimal) plausible for an age."""
    if age >= 16:
        weight, height = rng.uniform(48, 115), rng.uniform(148, 192)
    elif age >= 1:
        weight = (9 + 2.7 * (age - 1)) * rng.uniform(0.85, 1.25)
        height = (75 + 6.3 * (age - 1)) * rng.uniform(0.95, 1.05)
    else:
        weight = 3.3 + 6 * age * rng.uniform(0.9, 1.1)
        height = 50 + 25 * age * rng.uniform(0.9, 1.1)
    return Decimal(round(weight * 100)) / 100, Decimal(round(height * 10)) / 10


def _uuid(rng: random.Random) -> str:
    return str(uuid_module.UUID(int=rng.getrandbits(128), version=4))


def _allocate(rng: random.Random, weights: array, total: int) -> array:
    """Integer counts proportional to weights that add up to exactly total."""
    n = len(weights)
    counts = array("I", bytes(4 * n))
    weight_sum = sum(weights)
    if not n or total <= 0 or weight_sum <= 0:
        return counts
    assigned = 0
    for i, w in enumerate(weights):
        counts[i] = int(w * total / weight_sum)
        assigned += counts[i]
    for i in rng.choices(range(n), weights=weights, k=total - assigned):
        counts[i] += 1
    return counts


def _at_least(counts: array, index: int, minimum: int) -> None:
    """Raise one patient's count to minimum, taking the difference from the busiest patients."""
    if index >= len(counts) or counts[index] >= minimum:
        return
    need = minimum - counts[index]
    counts[index] = minimum
    others = [i for i in range(len(counts)) if i != index and i not in PLANTED]
    for _ in range(need):
        busiest = max(others, key=counts.__getitem__, default=None)
        if busiest is None or counts[busiest] == 0:
            return  # too few rows to keep the total exact; the edge case matters more
        counts[busiest] -= 1


# Patients planted at fixed positions so that every clinic, however small, has each edge case.
COMPLETE, MINIMAL, DELETED, TRICKY, DELETED_RECORDS, MINIMAL_RECORDS = range(6)
PLANTED = (COMPLETE, MINIMAL, DELETED, TRICKY, DELETED_RECORDS, MINIMAL_RECORDS)

HOSTILE_FILE_NAMES = (
    "../../etc/passwd",
    "..\\..\\Windows\\win.ini",
    "CON.txt",
    "nombre con espacios .pdf",
    "sonrisa 😁.jpg",
    "factura: enero/2024?.pdf",
    "lpt1",
    "Resultados finales." + "muy largo " * 30 + ".pdf",
    "radiografía\tfinal.png",
    "resultados.pdf.",
)
LONG_TEXT = "Evolución: paciente estable, continúa tratamiento. " * 800  # > 32,767 characters

# CFDI planted at fixed positions of a clinic's invoices.
CFDI_33, CFDI_BROKEN, CFDI_UUID_MISMATCH, CFDI_CANCELLED, CFDI_PAYMENT, CFDI_CREDIT_NOTE = range(6)
CFDI_USD, CFDI_33_PAYMENT, CFDI_WITHHOLDING = 6, 7, 8
CFDI_33_LAST_DAY = date(2023, 6, 30)  # CFDI 3.3 stopped being valid after this date

SUPPLIERS = (
    ("DISTRIBUIDORA DENTAL DEL BAJÍO", "601", "goods"),
    ("DEPÓSITO DENTAL VILLA DE CORTÉS", "601", "goods"),
    ("LABORATORIO DENTAL ORTIZ Y ASOCIADOS", "601", "lab"),
    ("SUMINISTROS MÉDICOS DEL NORTE", "601", "goods"),
    ("IMPORTADORA DE IMPLANTES DENTALES", "601", "implants"),
    ("RADIOLOGÍA ORAL INTEGRAL", "601", "lab"),
    ("TELECOMUNICACIONES PENINSULARES", "601", "service"),
    ("SOFTWARE CLÍNICO EN LA NUBE", "601", "service"),
)
SUPPLY_ITEMS = {
    "goods": (
        ("42151600", "H87", "Resina compuesta A2 jeringa 4 g", 350, 780),
        ("42132200", "H87", "Guantes de nitrilo caja con 100 piezas", 120, 260),
        ("42142700", "H87", "Lidocaína con epinefrina caja con 50 cartuchos", 480, 900),
        ("42151900", "H87", "Fresas de carburo para alta velocidad (paquete)", 250, 600),
        ("42152400", "H87", "Ionómero de vidrio para restauración", 600, 1400),
        ("42131600", "H87", "Cubrebocas tricapa caja con 50 piezas", 60, 150),
    ),
    "lab": (
        ("85121800", "E48", "Corona de zirconia (laboratorio)", 1500, 3200),
        ("85121800", "E48", "Guarda oclusal rígida (laboratorio)", 800, 1500),
        ("85121800", "E48", "Radiografía panorámica digital", 350, 600),
    ),
    "implants": (
        ("42295400", "H87", "Implante dental de titanio 4.1 x 10 mm", 180, 320),
        ("42295400", "H87", "Pilar protésico recto", 60, 140),
    ),
    "service": (
        ("81112100", "E48", "Servicio de internet y telefonía (mensualidad)", 599, 1299),
        ("81112501", "E48", "Suscripción mensual de software de gestión clínica", 890, 2500),
    ),
}
LANDLORDS = ("ROSARIO IBÁÑEZ PEÑA", "JORGE ZAVALA ORDÓÑEZ", "ELENA QUIÑONES ÁVILA")
# Expenses that carry state taxes (the implocal complement): a hotel's lodging tax (ISH), and a
# specialist's fees with the cedular tax withheld as well as ISR and two thirds of the VAT.
HOTELS = ("HOTEL MISIÓN DEL BAJÍO", "HOTELES Y CONVENCIONES DEL PACÍFICO")
SPECIALISTS = ("ALEJANDRA MÉNDEZ SOLÍS", "RAÚL CASTAÑEDA NÚÑEZ")


@dataclass
class _PatientFacts:
    """What the other tables need to know about a generated patient."""

    id: int
    index: int
    row: Row
    person: names.Person
    created_at: datetime
    end: datetime  # records stop here: deletion or now


@dataclass
class _Clinic:
    name: str
    legal_name: str
    rfc: str
    timezone: str
    place: names.Place
    created_at: datetime


class _ClinicSeeder:
    """Generates one subscription's rows, patient by patient, and writes its files."""

    def __init__(
        self,
        *,
        sid: int,
        profile: Profile,
        patients: int,
        seed: int,
        now: datetime,
        sink: _BatchSink,
        files: ObjectStore,
        progress: Progress | None,
    ) -> None:
        self.sid = sid
        self.profile = profile
        self.n = patients
        self.seed = seed
        self.now = now
        self.start = now - timedelta(days=round(365.25 * HISTORY_YEARS))
        self.sink = sink
        self.files = files
        self.progress = progress
        self.file_bytes = 0
        self.authorised_user_ids: list[int] = []
        self.user_roles: dict[int, str] = {}
        self.sequences: Counter[str] = Counter()
        self.attachment_index = 0
        self.hostile_next = 0
        self.planted_attachment_cases = ["missing", "deleted", "unrecorded"]

    # ids and randomness ----------------------------------------------------------------------

    def rng(self, *parts: object) -> random.Random:
        """An independent stream per purpose, so that one table's content never shifts another's."""
        return random.Random(":".join(str(p) for p in (self.seed, self.sid, *parts)))

    def next_id(self, table: Table) -> int:
        self.sequences[table.name] += 1
        return row_id(self.sid, self.sequences[table.name])

    def add(self, table: Table, row: Row) -> None:
        self.sink.add(table, row)

    # the clinic ------------------------------------------------------------------------------

    def run(self) -> None:
        self.clinic = self._clinic()
        self._users()
        self._questions()
        self._patients()
        self._invoices()
        self._backup_history()

    def _clinic(self) -> _Clinic:
        rng = self.rng("clinic")
        timezone = rng.choices(
            ("America/Mexico_City", "America/Tijuana", "America/Cancun", "America/Monterrey"),
            weights=(70, 10, 10, 10),
        )[0]
        place = rng.choice([p for p in names.PLACES if p.timezone == timezone])
        # The owner is the practice's doctor, whose name the clinic often carries.
        self.owner = names.random_person(rng, None, rng.choice("FM"))
        while self.owner.last_name in names.COMPOUND_SURNAMES:
            self.owner = names.random_person(rng, None, rng.choice("FM"))
        surname = self.owner.last_name
        doctor = ("Dra. " if self.owner.sex == "F" else "Dr. ") + self.owner.first_name.split()[0]
        name, legal = rng.choice(
            (
                (f"Clínica Dental Sonrisa {surname}", f"Clínica Dental Sonrisa {surname}, S.A. de C.V."),
                (f"Consultorio Dental {doctor} {surname}", f"Servicios Odontológicos {surname}, S.C."),
                (f"Centro Odontológico {place.municipality}", f"Centro Odontológico {place.municipality}, S.C."),
                (f"Clínica Médica Familiar {surname}", f"Atención Médica Familiar {surname}, S.A. de C.V."),
                (f"Ortodoncia y Estética Dental {surname}", f"Estética Dental {surname}, S. de R.L. de C.V."),
            )
        )  # fmt: skip
        founded = date(rng.randint(2003, 2019), rng.randint(1, 12), rng.randint(1, 28))
        created_at = self.start - timedelta(days=rng.randint(30, 400), seconds=rng.randrange(86400))
        clinic = _Clinic(
            name, legal, names.rfc_persona_moral(legal, founded, rng), timezone, place, created_at
        )
        self.add(
            tables.subscriptions,
            {
                "id": self.sid,
                "name": clinic.name,
                "legal_name": clinic.legal_name,
                "rfc": clinic.rfc,
                "timezone": clinic.timezone,
                "status": "active",
                "created_at": created_at,
            },
        )
        return clinic

    def _users(self) -> None:
        rng = self.rng("users")
        # (role stored, label in SeedSummary.user_roles, active, authorised, sees patients)
        cast = (
            ("owner", "owner", True, True, True),
            ("admin", "admin", True, True, False),
            ("staff", "staff", True, False, True),
            ("staff", "staff", True, False, False),
            ("staff", "staff", True, False, False),
            ("admin", "inactive", False, True, True),  # a dentist who left: authorised, not active
        )
        self.practitioners: list[int] = []
        for role, label, active, authorised, practitioner in cast:
            person = (
                self.owner if role == "owner" else names.random_person(rng, None, rng.choice("FM"))
            )
            user_id = self.next_id(tables.users)
            self.user_roles[user_id] = label
            if active and authorised:
                self.authorised_user_ids.append(user_id)
            if practitioner:
                self.practitioners.append(user_id)
            domain = "example.com" if role != "staff" else "example.org"
            self.add(
                tables.users,
                {
                    "id": user_id,
                    "subscription_id": self.sid,
                    "email": names.email_for(person, rng, domain),
                    "full_name": names.full_name(person),
                    "role": role,
                    "is_active": active,
                    "can_request_backup": authorised,
                    "created_at": _between(
                        rng, self.clinic.created_at, self.start + timedelta(days=400)
                    ),
                },
            )

    def _questions(self) -> None:
        rng = self.rng("questions")
        # Ids follow the order questions were created in, not their position: readers must sort by position.
        order = list(range(len(clinical.QUESTIONNAIRE)))
        rng.shuffle(order)
        self.question_ids = [row_id(self.sid, order[k] + 1) for k in range(len(order))]
        self.sequences[tables.anamnesis_questions.name] = len(order)
        for position, (question, question_id) in enumerate(
            zip(clinical.QUESTIONNAIRE, self.question_ids, strict=True), start=1
        ):
            self.add(
                tables.anamnesis_questions,
                {
                    "id": question_id,
                    "subscription_id": self.sid,
                    "section": question.section,
                    "position": position,
                    "question": question.text,
                    "answer_type": question.answer_type,
                    "is_active": question.is_active,
                },
            )

    # patients and their records --------------------------------------------------------------

    def _allocations(self) -> dict[str, array]:
        rng = self.rng("allocation")
        p = self.profile
        activity = array("d", (rng.gammavariate(1.5, 1.0) for _ in range(self.n)))
        questionnaire = array(
            "d", (0.0 if rng.random() < 0.08 else rng.uniform(0.9, 1.1) for _ in range(self.n))
        )
        plan = {
            "consultations": _allocate(rng, activity, p.total(p.consultations_per_patient, self.n)),
            "dental": _allocate(rng, activity, p.total(p.dental_treatments_per_patient, self.n)),
            "answers": _allocate(
                rng, questionnaire, p.total(p.anamnesis_answers_per_patient, self.n)
            ),
            "vaccinations": _allocate(rng, activity, p.total(p.vaccinations_per_patient, self.n)),
            "attachments": _allocate(rng, activity, p.total(p.attachments_per_patient, self.n)),
        }
        for counts in plan.values():
            for index in (COMPLETE, DELETED, MINIMAL_RECORDS):
                _at_least(counts, index, 1)
            _at_least(counts, DELETED_RECORDS, 2)
            _at_least(counts, TRICKY, 1)
        _at_least(plan["consultations"], COMPLETE, 3)
        _at_least(plan["attachments"], COMPLETE, 4)
        _at_least(plan["answers"], COMPLETE, len(clinical.QUESTIONNAIRE) + 3)
        return plan

    def _patients(self) -> None:
        plan = self._allocations()
        for index in range(self.n):
            facts = self.patient(index)
            self.add(tables.patients, facts.row)
            self._consultations_and_treatments(
                facts, plan["consultations"][index], plan["dental"][index]
            )
            self._answers(facts, plan["answers"][index])
            self._vaccinations(facts, plan["vaccinations"][index])
            self._attachments(facts, plan["attachments"][index])
            if self.progress and (index + 1) % 10_000 == 0:
                self.progress(f"subscription {self.sid}: {index + 1}/{self.n} patients")

    def patient(self, index: int) -> _PatientFacts:
        """Patient index of this clinic; calling it again gives the same patient (CFDI use it)."""
        rng = self.rng("patient", index)
        patient_id = row_id(self.sid, index + 1)
        span = (self.now - timedelta(days=2) - self.start).total_seconds()
        # Ids grow with time, as the platform assigns them; the practice grows, so later years are busier.
        created_at = self.start + timedelta(
            seconds=int(span * math.sqrt((index + rng.random()) / max(self.n, 1)))
        )
        if index == MINIMAL:
            person = names.Person("Paciente sin datos", None, None, None, None)
            row = self._patient_row(patient_id, person, created_at)
            return _PatientFacts(patient_id, index, row, person, created_at, self.now)

        roll = rng.random()
        sex = "F" if roll < 0.55 or index == COMPLETE else "M" if roll < 0.99 else "X"
        age_roll = rng.random()
        age_years = (
            rng.randint(0, 12)
            if age_roll < 0.2
            else rng.randint(13, 17)
            if age_roll < 0.28
            else rng.randint(18, 90)
        )
        if index == COMPLETE:
            age_years = 18 + age_years % 50
        birth = self.now.date() - timedelta(days=int(age_years * 365.25) + rng.randrange(365))
        birth_date = None if rng.random() < 0.03 and index != COMPLETE else birth
        person = names.random_person(rng, birth_date, sex)
        if index == COMPLETE:
            person = names.Person(
                person.first_name, person.last_name, person.second_last_name or "Núñez", sex, birth
            )
        elif rng.random() < 0.004:
            person = names.Person(person.first_name, None, None, sex, birth_date)
        home = self.clinic.place if rng.random() < 0.7 else rng.choice(names.PLACES)
        state_code = (
            "NE" if rng.random() < 0.02 else names.STATE_CURP_CODE[home.state] if rng.random() < 0.8 else rng.choice(names.CURP_STATE_CODES)
        )  # fmt: skip
        full = index == COMPLETE

        def maybe(probability: float, value: Any) -> Any:
            return value if full or rng.random() < probability else None

        curp = maybe(0.75, names.curp_for(person, state_code, rng))
        adult = age_years >= 18
        rfc = maybe(0.6, names.rfc_persona_fisica(person, rng)) if adult or full else None
        street = maybe(0.85, rng.choice(names.STREETS))
        interior = maybe(0.2, rng.choice(("Depto. 3", "Int. 201", "Casa 4", "B", "")))
        deleted_at = None
        end = self.now
        if index == DELETED or (index not in PLANTED and rng.random() < 0.02):
            deleted_at = _between(
                rng, created_at + timedelta(days=1), self.now - timedelta(hours=1)
            )
            end = deleted_at
        updated_at = maybe(0.7, _between(rng, created_at, end))
        values = {
            "birth_date": person.birth_date,
            "sex": None if rng.random() < 0.02 and not full else sex,
            "curp": curp,
            "rfc": rfc,
            "email": maybe(0.8, names.email_for(person, rng, rng.choice(("example.com", "example.org")))),
            "phone": maybe(0.6, names.phone_for(rng, home.area_code)),
            "mobile": maybe(0.9, names.phone_for(rng, home.area_code)),
            "street": street,
            "exterior_number": maybe(0.95, rng.choice((str(rng.randint(1, 3500)), "S/N", f"{rng.randint(1, 300)}-B"))) if street else None,
            "interior_number": interior,
            "neighborhood": maybe(0.83, home.neighborhood),
            "municipality": maybe(0.85, home.municipality),
            "state": maybe(0.88, home.state),
            "postal_code": maybe(0.85, home.postal_code),
            "country": maybe(0.9, "México"),
            "tax_regime": rng.choice(clinical.TAX_REGIMES) if rfc else None,
            "tax_postal_code": home.postal_code if rfc else None,
            "blood_type": maybe(0.6, rng.choice(clinical.BLOOD_TYPES)),
            "allergies": maybe(0.5, rng.choice(clinical.ALLERGIES)),
            "notes": maybe(0.4, rng.choice(clinical.PATIENT_NOTES)),
            "updated_at": updated_at,
            "deleted_at": deleted_at,
        }  # fmt: skip
        if index == TRICKY:
            # Text a spreadsheet could mistake for a formula, a control character, a very long value.
            values["notes"] = '=HYPERLINK("http://example.com/resultados","Ver resultados")'
            values["allergies"] = "Penicilina\x07 (confirmar con el paciente)"
            values["street"] = "+52 Calle 10"
        row = self._patient_row(patient_id, person, created_at, values)
        return _PatientFacts(patient_id, index, row, person, created_at, end)

    def _patient_row(
        self, patient_id: int, person: names.Person, created_at: datetime, values: Row | None = None
    ) -> Row:
        row = {
            "id": patient_id,
            "subscription_id": self.sid,
            "first_name": person.first_name,
            "last_name": person.last_name,
            "second_last_name": person.second_last_name,
            "created_at": created_at,
        }
        for column in tables.patients.columns:
            row.setdefault(column.name, None)
        row.update(values or {})
        return row

    def _consultations_and_treatments(
        self, facts: _PatientFacts, consultations: int, treatments: int
    ) -> None:
        rng = self.rng("consultations", facts.index)
        child = (
            facts.person.birth_date is not None
            and (self.now.date() - facts.person.birth_date).days < 12 * 365
        )
        teeth = clinical.DECIDUOUS_TEETH if child else clinical.PERMANENT_TEETH
        dental_clinic = "Médica" not in self.clinic.name
        visits: list[tuple[int, datetime]] = []
        times = sorted(_between(rng, facts.created_at, facts.end) for _ in range(consultations))
        for k, started_at in enumerate(times):
            consultation_id = self.next_id(tables.consultations)
            visits.append((consultation_id, started_at))
            self.add(
                tables.consultations,
                self._consultation(
                    rng, facts, k, consultation_id, started_at, teeth, dental_clinic
                ),
            )
        for k in range(treatments):
            self.add(tables.dental_treatments, self._treatment(rng, facts, k, visits, teeth, child))

    def _consultation(
        self,
        rng: random.Random,
        facts: _PatientFacts,
        k: int,
        consultation_id: int,
        started_at: datetime,
        teeth: Sequence[int],
        dental_clinic: bool,
    ) -> Row:
        row: Row = {c.name: None for c in tables.consultations.columns}
        row.update(
            id=consultation_id,
            subscription_id=self.sid,
            patient_id=facts.id,
            started_at=started_at,
            created_at=min(started_at + timedelta(minutes=rng.randint(0, 90)), self.now),
        )
        if facts.index == MINIMAL_RECORDS and k == 0:
            return row
        age = _age_years(facts.person.birth_date, started_at.date())
        dental = rng.random() < (0.8 if dental_clinic else 0.25)
        encounter = rng.choice(
            [e for e in clinical.ENCOUNTERS if e.dental == dental and e.min_age <= age]
        )
        fill = {"tooth": str(rng.choice(teeth)), "days": str(rng.randint(1, 15))}
        full = facts.index == COMPLETE

        def maybe(probability: float, value: Any) -> Any:
            return value if full or rng.random() < probability else None

        row.update(
            practitioner_user_id=maybe(0.93, rng.choice(self.practitioners)),
            reason=maybe(0.97, encounter.reason),
            current_illness=maybe(0.8, encounter.current_illness.format(**fill)),
            physical_exam=maybe(0.8, encounter.physical_exam.format(**fill)),
            diagnosis_code=maybe(0.9, encounter.code),
            diagnosis=maybe(0.95, encounter.diagnosis),
            prognosis=maybe(0.6, encounter.prognosis),
            treatment_plan=maybe(0.85, encounter.plan.format(**fill)),
            notes=maybe(0.3, rng.choice(("Se explica el plan al paciente.", "Paciente acude acompañado.\nRefiere mejoría.", "Próxima cita en 2 semanas."))),
        )  # fmt: skip
        vitals = full or not encounter.dental or rng.random() < 0.4
        if vitals:
            adult = age >= 16
            fever = encounter.fever and rng.random() < 0.7
            high = encounter.hypertensive or (age > 40 and rng.random() < 0.1)
            weight, height = _growth(age, rng)
            row.update(
                weight_kg=maybe(0.9, weight),
                height_cm=maybe(0.8, height),
                temperature_c=maybe(0.9, Decimal(rng.randint(378, 392) if fever else rng.randint(358, 372)) / 10),
                systolic_bp=maybe(0.9, rng.randint(140, 175) if high else rng.randint(100, 130) if adult else rng.randint(85, 110)),
                diastolic_bp=maybe(0.9, rng.randint(90, 105) if high else rng.randint(60, 85) if adult else rng.randint(50, 70)),
                heart_rate=maybe(0.9, rng.randint(58, 100) if adult else rng.randint(75, 130)),
                respiratory_rate=maybe(0.8, rng.randint(12, 20) if adult else rng.randint(18, 30)),
            )  # fmt: skip
        if facts.index == TRICKY and k == 0:
            row["notes"] = LONG_TEXT
        if (facts.index == DELETED_RECORDS and k == 0) or (
            facts.index not in PLANTED and rng.random() < 0.01
        ):
            row["deleted_at"] = _between(rng, row["created_at"], self.now)
        return row

    def _treatment(
        self,
        rng: random.Random,
        facts: _PatientFacts,
        k: int,
        visits: Sequence[tuple[int, datetime]],
        teeth: Sequence[int],
        child: bool,
    ) -> Row:
        row: Row = {c.name: None for c in tables.dental_treatments.columns}
        row.update(
            id=self.next_id(tables.dental_treatments),
            subscription_id=self.sid,
            patient_id=facts.id,
            currency="MXN",
        )
        if facts.index == MINIMAL_RECORDS and k == 0:
            row.update(
                procedure_name="Valoración y diagnóstico",
                status="planned",
                created_at=facts.created_at,
            )
            return row
        full = facts.index == COMPLETE
        procedures = [
            p
            for p in clinical.PROCEDURES
            if (p.scope != "deciduous" or child) and (not child or p.low < 5000)
        ]
        procedure = rng.choice(procedures)
        visit = rng.choice(visits) if visits and (full or rng.random() < 0.7) else None
        created_at = (
            min(visit[1] + timedelta(minutes=rng.randint(5, 60)), self.now)
            if visit
            else _between(rng, facts.created_at, facts.end)
        )
        tooth = None
        surfaces = None
        if procedure.scope != "mouth":
            tooth = rng.choice(
                clinical.DECIDUOUS_TEETH if procedure.scope == "deciduous" else teeth
            )
            if procedure.scope == "tooth":
                anterior = tooth % 10 in clinical.ANTERIOR_POSITIONS
                surfaces = rng.choice(
                    clinical.ANTERIOR_SURFACES if anterior else clinical.POSTERIOR_SURFACES
                )
        status = rng.choices(
            ("completed", "planned", "in_progress", "cancelled"), weights=(60, 25, 8, 7)
        )[0]
        planned_on = created_at.date() if full or rng.random() < 0.95 else None
        completed_on = None
        if status == "completed":
            completed_on = _day_between(
                rng,
                created_at.date(),
                min(created_at.date() + timedelta(days=60), facts.end.date()),
            )
        cents = rng.choice((0, 0, 0, 50, rng.randint(1, 99)))
        price = Decimal(rng.randint(procedure.low, procedure.high) * 100 + cents) / 100
        row.update(
            consultation_id=visit[0] if visit else None,
            tooth_fdi=tooth,
            surfaces=surfaces,
            procedure_code=procedure.code,
            procedure_name=procedure.name,
            status=status,
            price=price if full or rng.random() < 0.97 else None,
            currency="USD" if procedure.name == "Implante dental" and rng.random() < 0.2 else "MXN",
            planned_on=planned_on,
            completed_on=completed_on,
            notes=rng.choice(clinical.TREATMENT_NOTES) if full or rng.random() < 0.25 else None,
            created_at=created_at,
        )  # fmt: skip
        if row["currency"] == "USD":
            row["price"] = (Decimal(rng.randint(700, 1400)) + Decimal(cents) / 100).quantize(
                Decimal("0.01")
            )
        if (facts.index == DELETED_RECORDS and k == 0) or (
            facts.index not in PLANTED and rng.random() < 0.01
        ):
            row["deleted_at"] = _between(rng, created_at, self.now)
        return row

    def _answers(self, facts: _PatientFacts, count: int) -> None:
        if not count:
            return
        rng = self.rng("answers", facts.index)
        questions = clinical.QUESTIONNAIRE
        first = rng.sample(range(len(questions)), min(count, len(questions)))
        first.sort()
        # Only questions whose answer can change are answered again (not "pregnant?" for a man).
        changeable = [q for q in first if not questions[q].female_only or facts.person.sex == "F"]
        repeats = rng.sample(changeable, min(count - len(first), len(changeable)))
        filled_at = facts.created_at + timedelta(minutes=rng.randint(1, 30))
        previous: dict[int, str | None] = {}
        for q in first:
            previous[q] = self._one_answer(rng, facts, questions[q], filled_at)
            self._answer_row(facts, q, previous[q], filled_at)
        later_from = filled_at + timedelta(days=30)
        for q in sorted(repeats):
            when = (
                _between(rng, later_from, facts.end)
                if later_from < facts.end
                else filled_at + timedelta(hours=1)
            )
            self._answer_row(
                facts, q, self._answer(rng, facts, questions[q], when, previous[q]), when
            )

    def _answer_row(self, facts: _PatientFacts, q: int, answer: str | None, when: datetime) -> None:
        self.add(
            tables.anamnesis_answers,
            {
                "id": self.next_id(tables.anamnesis_answers),
                "subscription_id": self.sid,
                "patient_id": facts.id,
                "question_id": self.question_ids[q],
                "answer": answer,
                "answered_at": when,
            },
        )

    def _answer(
        self,
        rng: random.Random,
        facts: _PatientFacts,
        question: clinical.Question,
        when: datetime,
        before: str | None,
    ) -> str | None:
        """A later answer to a question, always different from the one before."""
        for _ in range(10):
            value = self._one_answer(rng, facts, question, when)
            if value != before:
                return value
        return f"{before or ''} (actualizado)".strip()

    @staticmethod
    def _one_answer(
        rng: random.Random, facts: _PatientFacts, question: clinical.Question, when: datetime
    ) -> str | None:
        if facts.index != COMPLETE and rng.random() < 0.05:
            return None  # left blank
        if question.female_only and facts.person.sex != "F":
            return "No aplica" if question.answer_type == "yes_no" else None
        kind = question.answer_type
        if kind == "yes_no":
            return "Sí" if rng.random() < 0.3 else "No"
        if kind == "number":
            low, high = question.options
            return str(rng.randint(int(low), int(high)))
        if kind == "date":
            return _day_between(rng, when.date() - timedelta(days=400), when.date()).isoformat()
        return rng.choice(question.options)

    def _vaccinations(self, facts: _PatientFacts, count: int) -> None:
        if not count:
            return
        rng = self.rng("vaccinations", facts.index)
        doses = self._applicable_doses(rng, facts)
        chosen = sorted(rng.sample(range(len(doses)), min(count, len(doses))))
        for k, position in enumerate(chosen):
            dose, applied_on = doses[position]
            later = [d for d in doses[position + 1 :] if d[0].vaccine == dose.vaccine]
            row: Row = {c.name: None for c in tables.vaccinations.columns}
            recorded = datetime.combine(applied_on, time(9)) + timedelta(
                minutes=rng.randint(0, 600)
            )
            row.update(
                id=self.next_id(tables.vaccinations),
                subscription_id=self.sid,
                patient_id=facts.id,
                vaccine=dose.vaccine,
                applied_on=applied_on,
                created_at=min(
                    max(recorded, facts.created_at + timedelta(minutes=rng.randint(5, 60))),
                    self.now,
                ),
            )
            if not (facts.index == MINIMAL_RECORDS and k == 0):
                full = facts.index == COMPLETE
                letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
                row.update(
                    dose=dose.dose if full or rng.random() < 0.95 else None,
                    lot_number=f"{letters}{rng.randint(1000, 99999)}" if full or rng.random() < 0.9 else None,
                    manufacturer=rng.choice(clinical.MANUFACTURERS[dose.vaccine]) if full or rng.random() < 0.85 else None,
                    site=dose.site if full or rng.random() < 0.9 else None,
                    applied_by=f"Enf. {names.full_name(names.random_person(rng, None, 'F'))}" if full or rng.random() < 0.6 else None,
                    next_dose_on=later[0][1] if later and (full or rng.random() < 0.7) else None,
                    notes=rng.choice(clinical.VACCINE_NOTES) if full or rng.random() < 0.3 else None,
                )  # fmt: skip
            if (facts.index == DELETED_RECORDS and k == 0) or (
                facts.index not in PLANTED and rng.random() < 0.01
            ):
                row["deleted_at"] = _between(rng, row["created_at"], self.now)
            self.add(tables.vaccinations, row)

    def _applicable_doses(
        self, rng: random.Random, facts: _PatientFacts
    ) -> list[tuple[clinical.VaccineDose, date]]:
        """The Mexican schedule's doses this patient's age allows, with dates, oldest first."""
        today = facts.end.date()
        birth = facts.person.birth_date or today - timedelta(days=40 * 365)
        doses = []
        for dose in clinical.CHILD_SCHEDULE:
            applied = birth + timedelta(days=dose.age_days + rng.randint(0, 20))
            if applied <= today and dose.since <= applied.year <= dose.until:
                doses.append((dose, applied))
        if (today - birth).days > 18 * 365:
            covid = date(2021, rng.randint(3, 8), rng.randint(1, 28))
            for label, gap in (
                ("1a", 0),
                ("2a", rng.randint(21, 90)),
                ("Refuerzo", rng.randint(240, 360)),
            ):
                when = covid + timedelta(days=gap)
                if birth < when <= today:
                    doses.append(
                        (
                            clinical.VaccineDose(
                                "COVID-19", label, 0, "Brazo izquierdo (deltoides)"
                            ),
                            when,
                        )
                    )
            for age in range(25, 100, 10):
                when = birth + timedelta(days=age * 365 + rng.randint(0, 300))
                if when <= today:
                    doses.append(
                        (
                            clinical.VaccineDose(
                                "Td", "Refuerzo", 0, "Brazo izquierdo (deltoides)"
                            ),
                            when,
                        )
                    )
        for year in range(today.year - 6, today.year + 1):
            when = date(year, rng.choice((10, 11, 12)), rng.randint(1, 28))
            if birth + timedelta(days=365) < when <= today:
                doses.append(
                    (
                        clinical.VaccineDose("Influenza", "Anual", 0, "Brazo derecho (deltoides)"),
                        when,
                    )
                )
        doses.sort(key=lambda d: d[1])
        return doses

    # attachments ------------------------------------------------------------------------------

    def _attachments(self, facts: _PatientFacts, count: int) -> None:
        rng = self.rng("attachments", facts.index)
        for k in range(count):
            self._attachment(rng, facts, k)

    def _attachment_name(self, rng: random.Random, facts: _PatientFacts, k: int) -> tuple[str, str]:
        """A (file name, kind) pair; kind is 'png', 'jpeg' or 'pdf'."""
        if facts.index == COMPLETE and k < 3:
            # Two files with one name, and the same name again as macOS writes it (decomposed accents).
            return (
                "Radiografía panorámica.png" if k < 2 else "Radiografi\u0301a panora\u0301mica.png",
                "png",
            )
        if facts.index not in (COMPLETE, MINIMAL_RECORDS) and self.hostile_next < len(
            HOSTILE_FILE_NAMES
        ):
            name = HOSTILE_FILE_NAMES[self.hostile_next]
            self.hostile_next += 1
            lower = name.lower()
            kind = "png" if lower.endswith(".png") else "jpeg" if lower.endswith(".jpg") else "pdf"
            return name, kind
        kind = rng.choices(("png", "jpeg", "pdf"), weights=(35, 35, 30))[0]
        day = _day_between(rng, facts.created_at.date(), facts.end.date())
        if kind == "png":
            name = rng.choice(
                ("Radiografía panorámica.png", f"Radiografía periapical {rng.choice(clinical.PERMANENT_TEETH)}.png",
                 f"Captura de pantalla {day.isoformat()} a las {rng.randint(9, 19)}.{rng.randint(10, 59)}.{rng.randint(10, 59)}.png",
                 "odontograma.png", "Ortopantomografía.png")
            )  # fmt: skip
        elif kind == "jpeg":
            name = rng.choice(
                (f"IMG_{day:%Y%m%d}_{rng.randint(8, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}.jpg",
                 f"WhatsApp Image {day.isoformat()} at {rng.randint(9, 21)}.{rng.randint(10, 59)}.{rng.randint(10, 59)}.jpeg",
                 f"foto intraoral {rng.randint(1, 6)}.jpg", "Foto frontal.JPG", "sonrisa antes.jpg", "sonrisa después.jpg")
            )  # fmt: skip
        else:
            name = rng.choice(
                (f"receta {day:%d-%m}.pdf", "Consentimiento informado firmado.pdf", "Estudios de laboratorio.pdf",
                 f"Biometría hemática {day:%m-%Y}.pdf", "Presupuesto tratamiento.pdf", "Identificación oficial (INE).pdf",
                 "Historia clínica.pdf")
            )  # fmt: skip
        return name, kind

    def _attachment(self, rng: random.Random, facts: _PatientFacts, k: int) -> None:
        file_name, kind = self._attachment_name(rng, facts, k)
        content_type = {"png": "image/png", "jpeg": "image/jpeg", "pdf": "application/pdf"}[kind]
        key = f"subscriptions/{self.sid}/attachments/{_uuid(rng)}"
        uploaded_at = _between(rng, facts.created_at, facts.end)
        case = None
        if facts.index not in (COMPLETE, MINIMAL_RECORDS) and self.hostile_next >= len(
            HOSTILE_FILE_NAMES
        ):
            if self.planted_attachment_cases:
                case = self.planted_attachment_cases.pop(0)
            else:
                roll = rng.random()
                case = (
                    "missing"
                    if roll < 0.01
                    else "deleted"
                    if roll < 0.03
                    else "unrecorded"
                    if roll < 0.08
                    else None
                )
        bare = facts.index == MINIMAL_RECORDS and k == 0  # every nullable column NULL
        if bare:
            case = "unrecorded"
        mean = self.profile.attachment_mean_bytes
        sigma = 1.1
        target = int(mean * rng.lognormvariate(-sigma * sigma / 2, sigma))
        target = max(2_000, min(target, 6_000_000))
        content = self.rng("file", self.attachment_index)
        self.attachment_index += 1
        written = _HashingWriter(None)
        if case == "missing":
            self._file_bytes(
                written, content, kind, target, file_name, facts
            )  # recorded, never stored
        else:
            with self.files.open_write(key, content_type) as out:
                written.target = out
                self._file_bytes(written, content, kind, target, file_name, facts)
            self.file_bytes += written.size
        recorded = case != "unrecorded"
        self.add(
            tables.attachments,
            {
                "id": self.next_id(tables.attachments),
                "subscription_id": self.sid,
                "patient_id": facts.id,
                "storage_key": key,
                "file_name": file_name,
                "content_type": None
                if bare or (not recorded and rng.random() < 0.5)
                else content_type,
                "size_bytes": written.size if recorded else None,
                "sha256": written.digest.hexdigest() if recorded else None,
                "uploaded_at": uploaded_at,
                "deleted_at": _between(rng, uploaded_at, self.now) if case == "deleted" else None,
            },
        )

    def _file_bytes(
        self,
        out: _HashingWriter,
        rng: random.Random,
        kind: str,
        size: int,
        file_name: str,
        facts: _PatientFacts,
    ) -> None:
        if kind == "png":
            file_formats.write_png(
                out, rng, size, colour="adiograf" not in file_name and "rtopantomo" not in file_name
            )
        elif kind == "jpeg":
            file_formats.write_jpeg(out, rng, size)
        else:
            title = (
                "Receta médica"
                if "receta" in file_name.lower()
                else file_name.rsplit(".", 1)[0][:60]
            )
            lines = [
                self.clinic.name,
                f"Paciente: {names.full_name(facts.person)}",
                f"Fecha: {facts.created_at:%d/%m/%Y}",
                "Amoxicilina 500 mg, 1 cápsula cada 8 horas por 7 días.",
                "Paracetamol 500 mg en caso de dolor.",
            ]
            file_formats.write_pdf(out, rng, size, title, lines)

    # invoices ----------------------------------------------------------------------------------

    def _cfdi_uuid(self, j: int) -> str:
        return _uuid(self.rng("cfdi-uuid", j)).upper()

    def _invoices(self) -> None:
        total = self.profile.total(self.profile.cfdi_per_patient, self.n)
        tz = ZoneInfo(self.clinic.timezone)
        clinic_party = cfdi_xml.Party(
            self.clinic.rfc, self.clinic.legal_name.upper(), "601", self.clinic.place.postal_code
        )
        self.expenses_seen = 0  # received invoices that could carry local taxes, so far
        for j in range(total):
            self._invoice(j, tz, clinic_party)

    def _invoice(self, j: int, tz: ZoneInfo, clinic_party: cfdi_xml.Party) -> None:
        rng = self.rng("cfdi", j)
        direction = "received" if j in (CFDI_BROKEN, CFDI_USD, CFDI_WITHHOLDING) else "issued" if j < 9 else rng.choices(("issued", "received"), weights=(65, 35))[0]  # fmt: skip
        kind = (
            "P" if j in (CFDI_PAYMENT, CFDI_33_PAYMENT) else "E" if j == CFDI_CREDIT_NOTE else "I"
        )
        if j >= 9:
            kind = rng.choices(("I", "E", "P"), weights=(85, 7, 8))[0]
        utc_issued = _between(rng, self.start, self.now - timedelta(hours=2))
        if j in (CFDI_33, CFDI_33_PAYMENT):
            utc_issued = min(
                _between(rng, self.start, self.start + timedelta(days=60)),
                datetime.combine(CFDI_33_LAST_DAY, time(12)),
            )
        local = utc_issued.replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None)
        if j in (CFDI_33, CFDI_33_PAYMENT) or local.date() < date(2022, 1, 1):
            version = "3.3"
        elif local.date() <= CFDI_33_LAST_DAY:
            version = rng.choice(("3.3", "4.0"))
        else:
            version = "4.0"
        v4 = version == "4.0"
        uuid = self._cfdi_uuid(j)
        patient_id = None
        currency, exchange_rate = "MXN", None
        payment_form: str | None = rng.choice(("01", "03", "04", "28"))
        payment_method: str | None = "PPD" if kind == "I" and rng.random() < 0.15 else "PUE"
        if payment_method == "PPD":
            payment_form = "99"
        related = self._cfdi_uuid(rng.randrange(j)) if j and kind in ("E", "P") else None

        if direction == "issued":
            issuer = clinic_party
            receiver, use, patient_id = self._invoice_receiver(rng, j, v4, kind)
            concepts = self._issued_concepts(rng, kind, v4)
            serie = {"I": "A", "E": "NC", "P": "CP"}[kind]
            folio = str(1000 + j)
        else:
            issuer, concepts = self._supplier_and_concepts(rng, j, kind)
            receiver = clinic_party
            use = "G01" if concepts[0].unit_key == "H87" else "G03"
            if kind == "P":
                use = "CP01" if v4 else "P01"
            elif kind == "E":
                use = "G02"
            serie = rng.choice(("F", "FA", "B", None))
            folio = str(rng.randint(1, 99999)) if serie or rng.random() < 0.5 else None
            if j == CFDI_USD or (j >= 9 and rng.random() < 0.03):
                currency = "USD"
                exchange_rate = Decimal(rng.randint(165000, 205000)) / 10000
        local_taxes: tuple[cfdi_xml.LocalTax, ...] = ()
        if direction == "received" and kind == "I" and j >= 9:
            replaced = self._local_tax_expense(j, self.expenses_seen)
            self.expenses_seen += 1
            if replaced is not None:
                issuer, concepts, local_taxes = replaced
                use = "G03"
        payment = None
        if kind == "P":
            # A payment receipt: no form or method of its own, currency XXX, the payment in a complement.
            payment_form = payment_method = None
            currency, exchange_rate = "XXX", None
            use = "CP01" if v4 else "P01"
            amount = Decimal(rng.randint(50000, 900000)) / 100
            payment = cfdi_xml.Payment(
                local - timedelta(days=rng.randint(0, 5)), rng.choice(("03", "04", "28")), amount,
                related or self._cfdi_uuid(j + 1), amount + Decimal(rng.choice((0, 0, 50000, 120000))) / 100,
            )  # fmt: skip
        elif kind == "E":
            payment_method = "PUE"
        invoice = cfdi_xml.Invoice(
            version=version, kind=kind, serie=serie, folio=folio, issued_at=local,
            stamped_at=local + timedelta(seconds=rng.randint(5, 400)), issuer=issuer, receiver=receiver,
            use=use, concepts=concepts, uuid=uuid, payment_form=payment_form, payment_method=payment_method,
            currency=currency, exchange_rate=exchange_rate, related_uuid=related if kind == "E" else None,
            payment=payment, local_taxes=local_taxes,
        )  # fmt: skip
        xml = cfdi_xml.build_cfdi(invoice, rng)
        row_uuid = uuid
        if j == CFDI_UUID_MISMATCH:
            row_uuid = _uuid(
                rng
            ).upper()  # the platform recorded another folio fiscal than the XML holds
        if j == CFDI_BROKEN:
            xml = xml[: len(xml) * 3 // 5]  # an upload cut short: not well-formed
        base = f"subscriptions/{self.sid}/cfdi/{direction}/{row_uuid}"
        self.files.put_bytes(f"{base}.xml", xml, "application/xml")
        self.file_bytes += len(xml)
        pdf_key = None
        if direction == "issued":
            pdf_key = f"{base}.pdf"
            pdf = _HashingWriter(None)
            with self.files.open_write(pdf_key, "application/pdf") as out:
                pdf.target = out
                total = "0.00" if kind == "P" else f"{cfdi_xml.invoice_total(invoice):,.2f}"
                file_formats.write_pdf(
                    pdf, rng, rng.randint(3_000, 9_000), f"Factura {serie or ''}{folio or ''}",
                    [f"Folio fiscal: {uuid}", f"Emisor: {issuer.name} ({issuer.rfc})",
                     f"Receptor: {receiver.name} ({receiver.rfc})", f"Total: ${total} {currency}",
                     "Este documento es una representación impresa de un CFDI."],
                )  # fmt: skip
            self.file_bytes += pdf.size
        cancelled = j == CFDI_CANCELLED or (j >= 9 and rng.random() < 0.05)
        created_at = utc_issued + (
            timedelta(seconds=rng.randint(5, 600))
            if direction == "issued"
            else timedelta(days=rng.randint(0, 10))
        )
        created_at = min(created_at, self.now)
        self.add(
            tables.cfdi_documents,
            {
                "id": self.next_id(tables.cfdi_documents),
                "subscription_id": self.sid,
                "direction": direction,
                "uuid": row_uuid,
                "xml_storage_key": f"{base}.xml",
                "pdf_storage_key": pdf_key,
                "issued_at": None if j == CFDI_BROKEN or (direction == "received" and rng.random() < 0.01) else utc_issued,
                "status": "cancelado" if cancelled else "vigente",
                "cancelled_at": _between(rng, created_at, min(created_at + timedelta(days=60), self.now)) if cancelled else None,
                "patient_id": patient_id,
                "created_at": created_at,
            },
        )  # fmt: skip

    def _invoice_receiver(
        self, rng: random.Random, j: int, v4: bool, kind: str
    ) -> tuple[cfdi_xml.Party, str, int | None]:
        public = cfdi_xml.Party(
            "XAXX010101000", "PUBLICO EN GENERAL", "616", self.clinic.place.postal_code
        )
        if self.n == 0 or (j >= 9 and rng.random() < 0.35):
            return public, "S01" if v4 else "P01", None
        facts = self.patient(rng.randrange(self.n))
        use = (
            "CP01"
            if kind == "P" and v4
            else "P01"
            if kind == "P"
            else "G02"
            if kind == "E"
            else "D01"
        )
        rfc = facts.row["rfc"]
        if not rfc:
            return public, "S01" if v4 else "P01", facts.id
        if facts.row["tax_regime"] == "616" and kind == "I":
            use = "S01"  # "sin obligaciones fiscales" cannot deduct medical expenses (D01)
        name = names.full_name(facts.person).upper()
        party = cfdi_xml.Party(
            rfc,
            name,
            facts.row["tax_regime"] or "605",
            facts.row["tax_postal_code"] or public.postal_code,
        )
        return party, use, facts.id

    def _issued_concepts(self, rng: random.Random, kind: str, v4: bool) -> list[cfdi_xml.Concept]:
        if kind in ("P", "E"):
            description = "Pago" if kind == "P" else "Devolución por tratamiento no realizado"
            price = Decimal(0) if kind == "P" else Decimal(rng.randint(30000, 300000)) / 100
            tax = "none" if kind == "P" else "iva16"
            return [cfdi_xml.Concept("84111506", "ACT", description, Decimal(1), price, tax=tax)]
        concepts = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            procedure = rng.choice(clinical.PROCEDURES[:-1])
            price = (
                Decimal(rng.randint(procedure.low, procedure.high) * 100 + rng.choice((0, 0, 50)))
                / 100
            )
            discount = (
                (price * Decimal(rng.choice((5, 10, 15))) / 100).quantize(cfdi_xml.CENT)
                if rng.random() < 0.15
                else Decimal(0)
            )
            concepts.append(
                cfdi_xml.Concept(
                    "85122000", "E48", procedure.name, Decimal(1), price, discount,
                    tax="exento" if rng.random() < 0.3 else "iva16",
                )
            )  # fmt: skip
        return concepts

    def _supplier_and_concepts(
        self, rng: random.Random, j: int, kind: str
    ) -> tuple[cfdi_xml.Party, list[cfdi_xml.Concept]]:
        if j == CFDI_WITHHOLDING or (j >= 9 and kind == "I" and rng.random() < 0.1):
            # Rent paid to a persona física: the clinic withholds ISR and two thirds of the VAT.
            landlord = rng.choice(LANDLORDS)
            person = names.Person(
                landlord.split()[0],
                landlord.split()[1],
                landlord.split()[2],
                None,
                date(1968, 5, 17),
            )
            rfc = (
                names.rfc_persona_fisica(person, self.rng("landlord", landlord)) or "XEXX010101000"
            )
            party = cfdi_xml.Party(rfc, landlord, "606", self.clinic.place.postal_code)
            rent = Decimal(rng.randint(12, 35) * 1000)
            return party, [cfdi_xml.Concept("80131502", "E48", "Arrendamiento de consultorio (mensualidad)", Decimal(1), rent, withhold=True)]  # fmt: skip
        if j == CFDI_USD:
            name, regime, category = SUPPLIERS[4]
        else:
            name, regime, category = rng.choice(SUPPLIERS)
        party_rng = self.rng("supplier", name)
        rfc = names.rfc_persona_moral(name, date(party_rng.randint(1990, 2015), party_rng.randint(1, 12), party_rng.randint(1, 28)), party_rng)  # fmt: skip
        party = cfdi_xml.Party(rfc, name, regime, rng.choice(names.PLACES).postal_code)
        if kind in ("P", "E"):
            description = "Pago" if kind == "P" else "Bonificación por devolución de material"
            price = Decimal(0) if kind == "P" else Decimal(rng.randint(10000, 200000)) / 100
            return party, [cfdi_xml.Concept("84111506", "ACT", description, Decimal(1), price, tax="none" if kind == "P" else "iva16")]  # fmt: skip
        concepts = []
        for _ in range(rng.randint(1, 4)):
            product, unit, description, low, high = rng.choice(SUPPLY_ITEMS[category])
            quantity = Decimal(rng.randint(1, 10)) if unit == "H87" else Decimal(1)
            price = Decimal(rng.randint(low * 100, high * 100)) / 100
            concepts.append(cfdi_xml.Concept(product, unit, description, quantity, price))
        return party, concepts

    def _local_tax_expense(
        self, j: int, seen: int
    ) -> tuple[cfdi_xml.Party, list[cfdi_xml.Concept], tuple[cfdi_xml.LocalTax, ...]] | None:
        """A hotel stay or a specialist's fees with its local tax: a clinic's first two
        expenses (so that every clinic has both), then one in a few."""
        rng = self.rng("cfdi-local", j)  # a stream of its own: other invoices stay as they were
        draw = rng.random()
        if seen < 2:
            draw = 0.0 if seen == 0 else 0.1
        if draw < 0.08:
            name = rng.choice(HOTELS)
            founded = date(rng.randint(1985, 2010), rng.randint(1, 12), rng.randint(1, 28))
            rfc = names.rfc_persona_moral(name, founded, self.rng("hotel", name))
            party = cfdi_xml.Party(rfc, name, "601", rng.choice(names.PLACES).postal_code)
            nights, rate = Decimal(rng.randint(1, 4)), Decimal(rng.randint(90, 260) * 10)
            stay = cfdi_xml.Concept("90111800", "DAY", "Hospedaje en habitación sencilla (congreso odontológico)", nights, rate)  # fmt: skip
            return party, [stay], (cfdi_xml.LocalTax("ISH", Decimal("3.00")),)
        if draw < 0.16:
            name = rng.choice(SPECIALISTS)
            first, last, second = name.split()
            person = names.Person(first, last, second, None, date(1979, 9, 3))
            rfc = names.rfc_persona_fisica(person, self.rng("specialist", name)) or "XEXX010101000"
            party = cfdi_xml.Party(rfc, name, "612", self.clinic.place.postal_code)
            fee = Decimal(rng.randint(15, 60) * 100)
            visit = cfdi_xml.Concept("85121800", "E48", "Honorarios por interconsulta de especialidad", Decimal(1), fee, withhold=True)  # fmt: skip
            return party, [visit], (cfdi_xml.LocalTax("Cedular", Decimal("2.00"), withheld=True),)
        return None

    # backup history ---------------------------------------------------------------------------

    def _backup_history(self) -> None:
        """Every other clinic has an old, expired backup and a failed one (which never counts)."""
        if self.sid % 2 == 0:
            return
        rng = self.rng("backups")
        owner = self.authorised_user_ids[0]
        failed_at = self.now - timedelta(days=270, hours=rng.randint(0, 48))
        self.add(
            tables.backup_requests,
            self._request_row(owner, failed_at, "failed", "No se pudo generar el respaldo por un error interno. Esta solicitud no cuenta para su límite."),
        )  # fmt: skip
        requested_at = self.now - timedelta(days=250, hours=rng.randint(0, 48))
        row = self._request_row(owner, requested_at, "expired", None)
        finished = requested_at + timedelta(minutes=rng.randint(10, 90))
        row.update(
            archive_key=f"{self.sid}/{row['id']}/respaldo_{requested_at:%Y-%m-%d}.zip",
            archive_size_bytes=rng.randint(5_000_000, 900_000_000),
            archive_sha256=rng.randbytes(32).hex(),
            link_expires_at=finished + timedelta(hours=72),
            email_sent_at=finished + timedelta(seconds=5),
            email_message_id=f"<{_uuid(rng)}@example.com>",
            run_id=_uuid(rng),
        )
        self.add(tables.backup_requests, row)

    def _request_row(
        self, user_id: int, requested_at: datetime, status: str, detail: str | None
    ) -> Row:
        row: Row = {c.name: None for c in tables.backup_requests.columns}
        row.update(
            id=self.next_id(tables.backup_requests),
            subscription_id=self.sid,
            requested_by_user_id=user_id,
            requested_at=requested_at,
            status=status,
            status_detail=detail,
            started_at=requested_at + timedelta(minutes=1),
            finished_at=requested_at + timedelta(minutes=25),
        )
        return row
