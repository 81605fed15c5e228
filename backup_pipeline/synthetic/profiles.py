"""Sizes of synthetic clinics: how many patients, and how many of everything else per patient."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    patients: int
    consultations_per_patient: float = 10.0
    dental_treatments_per_patient: float = 5.0
    anamnesis_answers_per_patient: float = 30.0
    vaccinations_per_patient: float = 1.5  # at most the doses a patient's age allows
    attachments_per_patient: float = 1.0
    attachment_mean_bytes: int = 100_000
    cfdi_per_patient: float = 0.5

    def total(self, per_patient: float, patients: int) -> int:
        return round(per_patient * patients)


PROFILES: dict[str, Profile] = {
    # The demo: every edge case present, a few MB of files, seeds in seconds.
    "small": Profile(
        "small",
        patients=40,
        attachments_per_patient=1.5,
        attachment_mean_bytes=40_000,
        cfdi_per_patient=0.75,
    ),
    "medium": Profile("medium", patients=2_000, attachment_mean_bytes=50_000),
    # 200k consultations, 100k dental treatments, 600k answers, 10k CFDI, 20k files of ~105 kB (~2 GB).
    "large": Profile("large", patients=20_000, attachment_mean_bytes=105_000),
}
