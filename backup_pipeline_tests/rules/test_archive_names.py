"""Archive names made from untrusted text: safe on every OS, unique per folder, stable."""

from __future__ import annotations

import re
import unicodedata
from datetime import date
from pathlib import PurePosixPath, PureWindowsPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_pipeline.rules.archive_names import (
    MAX_COMPONENT_BYTES,
    UniqueNames,
    archive_key,
    download_name,
    part_key,
    patient_folder,
    safe_component,
)

RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"} | {
    f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789¹²³"
}

# Text as users type it, plus the characters that make names dangerous.
hostile_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.characters(blacklist_categories=()),  # surrogates and controls too
        st.sampled_from(list('./\\:<>"|?* \t\n\x00\u202e\u0301\u200dÉéñ😀¹')),
    ),
    max_size=300,
) | st.builds(
    lambda stem, ext: stem + ext,
    st.sampled_from(["CON", "nul", "Com1", "lpt¹", "aux ", "..", ".", "", " . "]),
    st.sampled_from(["", ".txt", ".tar.gz", " ", ".", "/x"]),
)


def assert_safe(name: str, max_bytes: int = MAX_COMPONENT_BYTES) -> None:
    assert name
    assert name not in (".", "..")
    assert not set(name) & set('<>:"/\\|?*')
    assert all(unicodedata.category(c) not in ("Cc", "Cs", "Zl", "Zp") for c in name)
    assert not name.endswith((" ", ".")) and not name.startswith((" ", "."))
    assert name.split(".", 1)[0].rstrip(" ").upper() not in RESERVED
    assert len(name.encode("utf-8")) <= max_bytes
    assert unicodedata.is_normalized("NFC", name)


@given(hostile_text)
@settings(max_examples=500)
def test_any_text_becomes_a_safe_component(text):
    assert_safe(safe_component(text, fallback="archivo"))


@given(hostile_text)
@settings(max_examples=300)
def test_safe_component_is_idempotent(text):
    once = safe_component(text, fallback="archivo")
    assert safe_component(once, fallback="archivo") == once


@given(hostile_text, st.integers(min_value=64, max_value=255))
def test_safe_component_respects_a_smaller_byte_limit(text, limit):
    name = safe_component(text, fallback="archivo", max_bytes=limit)
    assert_safe(name, limit)
    assert safe_component(name, fallback="archivo", max_bytes=limit) == name


@given(st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]), min_size=1))
def test_ordinary_names_are_kept_as_they_are(stem):
    name = f"{stem[:200]}.pdf"
    if name.split(".", 1)[0].upper() not in RESERVED:
        assert safe_component(name, fallback="archivo") == name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../x", "_.._x"),
        ("/etc/passwd", "_etc_passwd"),
        ("C:\\x", "C__x"),
        ("a\\b", "a_b"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("COM1", "_COM1"),
        ("com¹.png", "_com¹.png"),
        ("CON .tar.gz", "_CON .tar.gz"),
        ("Aux", "_Aux"),
        ("CONSULTA.pdf", "CONSULTA.pdf"),
        ("foo. ", "foo"),
        ("  radiografía.png  ", "radiografía.png"),
        (".", "archivo"),
        ("..", "archivo"),
        ("", "archivo"),
        ("\x00\x01", "archivo"),
        ("línea\nnueva.txt", "línea nueva.txt"),
        ("factura\u202egnp.exe", "facturagnp.exe"),
        ("muela 😀.jpg", "muela 😀.jpg"),
        ("familia 👨\u200d👩\u200d👧.jpg", "familia 👨\u200d👩\u200d👧.jpg"),
        (".foto oculta.png", "foto oculta.png"),
    ],
)
def test_hostile_names_are_made_safe(raw, expected):
    assert safe_component(raw, fallback="archivo") == expected


def test_decomposed_accents_are_composed():
    decomposed = unicodedata.normalize("NFD", "Peña Íñiguez.pdf")
    assert decomposed != "Peña Íñiguez.pdf"
    assert safe_component(decomposed, fallback="archivo") == "Peña Íñiguez.pdf"


def test_long_name_is_cut_on_a_character_boundary_keeping_its_extension():
    raw = "é" * 150 + ".jpeg"  # 305 bytes
    name = safe_component(raw, fallback="archivo")
    assert name.endswith(".jpeg")
    assert len(name.encode("utf-8")) <= 255
    assert name == "é" * 125 + ".jpeg"


def test_long_emoji_name_never_splits_a_character():
    name = safe_component("😀" * 100, fallback="archivo")
    assert name == "😀" * 63  # 252 bytes: a 64th would not fit


def test_an_unsafe_fallback_is_refused():
    with pytest.raises(ValueError):
        safe_component("..", fallback="../x")


def test_patient_folder_names_last_names_then_first_name_and_the_id():
    assert patient_folder("García", "López", "Ana", 17) == "adjuntos/García López Ana (17)"
    assert patient_folder(None, "", "Ana", 18) == "adjuntos/Ana (18)"
    assert patient_folder(None, None, "  ", 19) == "adjuntos/Paciente (19)"
    assert patient_folder("../..", None, "CON", 20) == "adjuntos/_.. CON (20)"


def test_two_patients_with_one_name_get_two_folders():
    assert patient_folder("Pérez", None, "Juan", 1) != patient_folder("Pérez", None, "Juan", 2)


@given(hostile_text, hostile_text, hostile_text, st.integers(min_value=1, max_value=10**12))
def test_patient_folder_is_one_safe_component_that_keeps_the_id(last, second, first, pid):
    folder = patient_folder(last, second, first, pid)
    root, name = folder.split("/", 1)
    assert root == "adjuntos"
    assert_safe(name)
    assert name.endswith(f" ({pid})")


def test_same_name_twice_keeps_both_case_insensitively():
    names = UniqueNames()
    first = names.path("adjuntos/Ana (1)", "Foto.PNG", fallback="archivo")
    second = names.path("adjuntos/Ana (1)", "foto.png", fallback="archivo")
    third = names.path("adjuntos/Ana (1)", "FOTO.png", fallback="archivo")
    other_folder = names.path("adjuntos/Luis (2)", "foto.png", fallback="archivo")
    assert first == "adjuntos/Ana (1)/Foto.PNG"
    assert second == "adjuntos/Ana (1)/foto (2).png"
    assert third == "adjuntos/Ana (1)/FOTO (3).png"
    assert other_folder == "adjuntos/Luis (2)/foto.png"


def test_a_real_name_that_looks_numbered_is_still_kept_apart():
    names = UniqueNames()
    paths = [names.path("f", n, fallback="archivo") for n in ["a.png", "a.png", "A (2).png", ".."]]
    assert paths == ["f/a.png", "f/a (2).png", "f/A (2) (2).png", "f/archivo"]


def test_numbering_a_name_at_the_byte_limit_stays_within_it():
    names = UniqueNames(max_path_units=None)
    raw = "x" * 300 + ".pdf"
    first = names.path("f", raw, fallback="archivo").split("/", 1)[1]
    second = names.path("f", raw, fallback="archivo").split("/", 1)[1]
    assert len(first.encode()) == 255 and len(second.encode()) == 255
    assert second.endswith(" (2).pdf")


def test_numbering_a_name_at_the_path_limit_stays_within_it():
    names = UniqueNames()
    raw = "x" * 300 + ".pdf"
    first = names.path("f", raw, fallback="archivo")
    second = names.path("f", raw, fallback="archivo")
    assert len(first) == len(second) == 140  # ASCII: one UTF-16 unit per character
    assert first.endswith("x.pdf") and second.endswith("x (2).pdf")


@given(st.lists(hostile_text, max_size=30), st.integers(min_value=64, max_value=255))
def test_unique_names_are_safe_unique_and_stay_in_their_folder(raws, limit):
    names = UniqueNames(max_bytes=limit)
    folder = "adjuntos/Ana (1)"
    paths = [names.path(folder, raw, fallback="archivo") for raw in raws]
    for path in paths:
        assert path.startswith(folder + "/")
        name = path[len(folder) + 1 :]
        assert_safe(name, limit)
        for flavour in (PurePosixPath, PureWindowsPath):
            parts = flavour(path).parts
            assert parts[:-1] == ("adjuntos", "Ana (1)") and ".." not in parts
    assert len({unicodedata.normalize("NFC", p.casefold()) for p in paths}) == len(paths)
    again = UniqueNames(max_bytes=limit)
    assert [again.path(folder, raw, fallback="archivo") for raw in raws] == paths


def test_the_character_rule_holds_past_the_remembered_characters(monkeypatch):
    from backup_pipeline.rules import archive_names as names

    monkeypatch.setattr(names, "_CHAR_MAP", names._CharMap())
    monkeypatch.setattr(names._CharMap, "MAX_REMEMBERED", 3)
    text = "a\tb<c\ud800d\u202ee\u200df\x07g"
    for _ in range(2):  # the first pass fills the table, the second reads it
        assert names._filter_chars(text) == "a b_cde\u200dfg"
    assert len(names._CHAR_MAP) == 3


# --- Windows' path limit ------------------------------------------------------------------------


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@given(
    hostile_text,
    hostile_text,
    hostile_text,
    st.integers(min_value=1, max_value=10**18),
    st.lists(hostile_text, max_size=20),
)
@settings(max_examples=300)
def test_attachment_paths_stay_within_140_utf16_units(last, second, first, pid, raws):
    folder = patient_folder(last, second, first, pid)
    assert utf16_length(folder) <= 70 and folder.endswith(f" ({pid})")
    names = UniqueNames()
    paths = [names.path(folder, raw, fallback="archivo") for raw in raws]
    assert all(utf16_length(path) <= 140 for path in paths)
    folded = [unicodedata.normalize("NFC", path).casefold() for path in paths]
    assert len(set(folded)) == len(folded)


def test_an_emoji_counts_two_units_towards_the_limit():
    names = UniqueNames()
    path = names.path("adjuntos/Ana (1)", "😀" * 100 + ".png", fallback="archivo")
    assert path.endswith(".png") and utf16_length(path) in (139, 140)  # never half an emoji


def test_names_windows_folds_alike_are_kept_apart():
    names = UniqueNames()
    folder = "adjuntos/Ana (1)"
    paths = [
        names.path(folder, raw, fallback="archivo")
        for raw in ["ı.txt", "I.txt", "Foto.JPG", "foto.jpg", "e\u0301.png", "É.png"]
    ]
    assert [path.rsplit("/", 1)[1] for path in paths] == [
        "ı.txt",
        "I (2).txt",  # Windows upper-cases 'ı' to 'I'
        "Foto.JPG",
        "foto (2).jpg",
        "é.png",
        "É (2).png",
    ]


def test_a_long_patient_name_is_shortened_keeping_its_start_and_id():
    folder = patient_folder("Hernández " * 10, "Gutiérrez", "María Guadalupe", 1234567)
    assert folder.startswith("adjuntos/Hernández Hernández") and folder.endswith(" (1234567)")
    assert utf16_length(folder.split("/", 1)[1]) <= 60


@given(st.text(max_size=400), st.integers(min_value=1, max_value=100_000))
@settings(max_examples=300)
def test_the_download_name_and_every_part_name_stay_within_70_units(clinic_name, parts):
    key = archive_key(7, 1234567890, clinic_name, date(2026, 11, 30))
    assert utf16_length(download_name(key)) <= 70
    assert re.fullmatch(r"respaldo_[a-z0-9-]+_2026-11-30\.zip", download_name(key))
    part_names = {download_name(part_key(key, n, parts)) for n in {1, parts // 2 or 1, parts}}
    assert all(utf16_length(name) <= 70 for name in part_names)
    assert all(name.startswith("respaldo_") and name.endswith(".zip") for name in part_names)


def test_a_long_clinic_name_keeps_its_first_words_in_every_part_name():
    name = "Clínica Dental 😀 Sonrisas del Norte de la Ciudad de México y Alrededores"
    key = archive_key(1, 2, name, date(2026, 1, 2))
    assert download_name(key) == "respaldo_clinica-dental-sonrisas-del-norte-de-la_2026-01-02.zip"
    stems = {download_name(part_key(key, n, 123)).split("_2026-01-02_")[0] for n in (1, 9, 10, 123)}
    assert stems == {"respaldo_clinica-dental-sonrisas-del"}  # the same in every part
    assert download_name(part_key(key, 10, 123)).endswith("_parte-10-de-123.zip")
