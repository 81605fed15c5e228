"""Mexican identities for synthetic clinics: names, places, and CURP/RFC built the way RENAPO and SAT build them."""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass
from datetime import date

FEMALE_NAMES = (
    "María José", "Sofía", "Valentina", "Ximena", "Regina", "Camila", "María Fernanda",
    "Guadalupe", "Andrea", "Daniela", "Mariana", "Lucía", "Renata", "Itzel", "Citlali",
    "Ana Sofía", "Begoña", "Inés", "Mónica", "Verónica", "Araceli", "Beatriz", "Rocío",
    "Noemí", "María de los Ángeles", "Patricia", "Leticia", "Yolanda", "Xóchitl", "Abril",
    "Natalia", "Paulina", "Elena", "Rosario", "Dulce María", "Nayeli", "Fátima", "Zoé",
)  # fmt: skip

MALE_NAMES = (
    "José Luis", "Juan Carlos", "Miguel Ángel", "Luis Ángel", "Santiago", "Mateo", "Sebastián",
    "Diego", "Emiliano", "Leonardo", "Iñaki", "Íker", "Rubén", "Raúl", "Jesús", "Óscar",
    "Héctor", "Andrés", "Martín", "Joaquín", "Julián", "Ramón", "Efraín", "Cuauhtémoc",
    "Fermín", "Alejandro", "Fernando", "Eduardo", "Ricardo", "Jorge", "Francisco Javier",
    "José María", "Gerardo", "Tomás", "Adrián", "Néstor", "Ulises", "Aarón",
)  # fmt: skip

SURNAMES = (
    "Hernández", "García", "Martínez", "López", "González", "Pérez", "Rodríguez", "Sánchez",
    "Ramírez", "Cruz", "Flores", "Gómez", "Morales", "Vázquez", "Jiménez", "Reyes", "Díaz",
    "Torres", "Gutiérrez", "Ruiz", "Mendoza", "Aguilar", "Ortiz", "Moreno", "Castillo",
    "Romero", "Álvarez", "Méndez", "Chávez", "Rivera", "Juárez", "Ramos", "Domínguez",
    "Herrera", "Medina", "Castro", "Vargas", "Guzmán", "Velázquez", "Muñoz", "Rojas",
    "Núñez", "Ibáñez", "Peña", "Ordóñez", "Avendaño", "Zúñiga", "Cervantes", "Salazar",
    "Orozco", "Xolalpa", "Ocaña", "Ávila", "Íñiguez", "Quiñones", "Cuevas", "Escobedo",
    "Villaseñor", "Tlacuilo", "Ugalde", "Yáñez", "Zavala", "Bautista", "Espinoza",
)  # fmt: skip

# Compound surnames exercise the CURP rule that skips particles ("DE LA CRUZ" -> "CRUZ").
COMPOUND_SURNAMES = ("de la Cruz", "del Río", "de León", "Ponce de León", "Montes de Oca", "de los Santos")  # fmt: skip

STREETS = (
    "Av. Insurgentes Sur", "Calle Francisco I. Madero", "Av. Revolución", "Calle Miguel Hidalgo",
    "Calzada de Tlalpan", "Av. Benito Juárez", "Calle Niños Héroes", "Calle 5 de Mayo",
    "Av. Vallarta", "Calle Ignacio Zaragoza", "Av. Constitución", "Calle Morelos",
    "Privada de los Álamos", "Cerrada Guadalupe Victoria", "Av. Tecnológico", "Calle Pino Suárez",
    "Andador Las Peñas", "Boulevard Díaz Ordaz", "Calle Jazmín", "Av. de la Paz",
    "Calle Emiliano Zapata", "Av. Universidad", "Calle Xicoténcatl", "Retorno 12 de Cecilio Robelo",
)  # fmt: skip


@dataclass(frozen=True)
class Place:
    state: str
    municipality: str
    neighborhood: str
    postal_code: str
    area_code: str
    timezone: str


PLACES = (
    Place("Ciudad de México", "Coyoacán", "Del Carmen", "04100", "55", "America/Mexico_City"),
    Place("Ciudad de México", "Benito Juárez", "Del Valle Centro", "03100", "55", "America/Mexico_City"),
    Place("Ciudad de México", "Benito Juárez", "Narvarte Poniente", "03020", "55", "America/Mexico_City"),
    Place("Ciudad de México", "Cuauhtémoc", "Roma Norte", "06700", "55", "America/Mexico_City"),
    Place("Ciudad de México", "Cuauhtémoc", "Condesa", "06140", "55", "America/Mexico_City"),
    Place("Ciudad de México", "Miguel Hidalgo", "Polanco V Sección", "11560", "55", "America/Mexico_City"),
    Place("Ciudad de México", "Iztapalapa", "San Lorenzo Tezonco", "09900", "55", "America/Mexico_City"),
    Place("Ciudad de México", "Tlalpan", "Toriello Guerra", "14050", "55", "America/Mexico_City"),
    Place("México", "Naucalpan de Juárez", "Ciudad Satélite", "53100", "55", "America/Mexico_City"),
    Place("México", "Toluca", "Centro", "50000", "722", "America/Mexico_City"),
    Place("México", "Nezahualcóyotl", "Benito Juárez", "57000", "55", "America/Mexico_City"),
    Place("Jalisco", "Guadalajara", "Americana", "44160", "33", "America/Mexico_City"),
    Place("Jalisco", "Zapopan", "Ciudad del Sol", "45050", "33", "America/Mexico_City"),
    Place("Jalisco", "San Pedro Tlaquepaque", "Centro", "45500", "33", "America/Mexico_City"),
    Place("Puebla", "Puebla", "La Paz", "72160", "222", "America/Mexico_City"),
    Place("Querétaro", "Querétaro", "Centro", "76000", "442", "America/Mexico_City"),
    Place("Guanajuato", "León", "Jardines del Moral", "37160", "477", "America/Mexico_City"),
    Place("Oaxaca", "Oaxaca de Juárez", "Reforma", "68050", "951", "America/Mexico_City"),
    Place("Veracruz", "Xalapa", "Centro", "91000", "228", "America/Mexico_City"),
    Place("Michoacán", "Morelia", "Chapultepec Norte", "58260", "443", "America/Mexico_City"),
    Place("San Luis Potosí", "San Luis Potosí", "Tequisquiapan", "78250", "444", "America/Mexico_City"),
    Place("Nuevo León", "Monterrey", "Centro", "64000", "81", "America/Monterrey"),
    Place("Nuevo León", "San Pedro Garza García", "Del Valle", "66220", "81", "America/Monterrey"),
    Place("Coahuila", "Saltillo", "República Oriente", "25280", "844", "America/Monterrey"),
    Place("Baja California", "Tijuana", "Zona Urbana Río Tijuana", "22010", "664", "America/Tijuana"),
    Place("Baja California", "Mexicali", "Centro Cívico", "21000", "686", "America/Tijuana"),
    Place("Quintana Roo", "Benito Juárez", "Supermanzana 3 Centro", "77500", "998", "America/Cancun"),
    Place("Quintana Roo", "Solidaridad", "Centro", "77710", "984", "America/Cancun"),
    Place("Yucatán", "Mérida", "García Ginerés", "97070", "999", "America/Merida"),
)  # fmt: skip

CURP_STATE_CODES = (
    "AS", "BC", "BS", "CC", "CL", "CM", "CS", "CH", "DF", "DG", "GT", "GR", "HG", "JC", "MC", "MN",
    "MS", "NT", "NL", "OC", "PL", "QT", "QR", "SP", "SL", "SR", "TC", "TS", "TL", "VZ", "YN", "ZS",
)  # fmt: skip
STATE_CURP_CODE = {
    "Ciudad de México": "DF", "México": "MC", "Jalisco": "JC", "Puebla": "PL", "Querétaro": "QT",
    "Guanajuato": "GT", "Oaxaca": "OC", "Veracruz": "VZ", "Michoacán": "MN",
    "San Luis Potosí": "SP", "Nuevo León": "NL", "Coahuila": "CL", "Baja California": "BC",
    "Quintana Roo": "QR", "Yucatán": "YN",
}  # fmt: skip

CURP_PATTERN = re.compile(
    r"^[A-Z][AEIOUX][A-Z]{2}\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])[HM]"
    r"(AS|BC|BS|CC|CL|CM|CS|CH|DF|DG|GT|GR|HG|JC|MC|MN|MS|NT|NL|OC|PL|QT|QR|SP|SL|SR|TC|TS|TL|VZ|YN|ZS|NE)"
    r"[B-DF-HJ-NP-TV-Z]{3}[0-9A-Z]\d$"
)
RFC_PERSONA_FISICA_PATTERN = re.compile(r"^[A-ZÑ&]{4}\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])[A-Z0-9]{2}[0-9A]$")  # fmt: skip
RFC_PERSONA_MORAL_PATTERN = re.compile(r"^[A-ZÑ&]{3}\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])[A-Z0-9]{2}[0-9A]$")  # fmt: skip

# Words RENAPO and SAT never let a key spell: the second (CURP) or last (RFC) letter becomes X.
_INCONVENIENT = frozenset(
    [
        "BACA",
        "BAKA",
        "BUEI",
        "BUEY",
        "CACA",
        "CACO",
        "CAGA",
        "CAGO",
        "CAKA",
        "CAKO",
        "COGE",
        "COGI",
        "COJA",
        "COJE",
        "COJI",
        "COJO",
        "COLA",
        "CULO",
        "FALO",
        "FETO",
        "GETA",
        "GUEI",
        "GUEY",
        "JETA",
        "JOTO",
        "KACA",
        "KACO",
        "KAGA",
        "KAGO",
        "KAKA",
        "KAKO",
        "KOGE",
        "KOGI",
        "KOJA",
        "KOJE",
        "KOJI",
        "KOJO",
        "KOLA",
        "KULO",
        "LILO",
        "LOCA",
        "LOCO",
        "LOKA",
        "LOKO",
        "MAME",
        "MAMO",
        "MEAR",
        "MEAS",
        "MEON",
        "MIAR",
        "MION",
        "MOCO",
        "MOKO",
        "MULA",
        "MULO",
        "NACA",
        "NACO",
        "PEDA",
        "PEDO",
        "PENE",
        "PIPI",
        "PITO",
        "POPO",
        "PUTA",
        "PUTO",
        "QULO",
        "RATA",
        "ROBA",
        "ROBE",
        "ROBO",
        "RUIN",
        "SENO",
        "TETA",
        "VACA",
        "VAGA",
        "VAGO",
        "VAKA",
        "VUEI",
        "VUEY",
        "WUEI",
        "WUEY",
    ]
)
_PARTICLES = frozenset(
    [
        "DA",
        "DAS",
        "DE",
        "DEL",
        "DER",
        "DI",
        "DIE",
        "DD",
        "EL",
        "LA",
        "LOS",
        "LAS",
        "LE",
        "LES",
        "MAC",
        "MC",
        "VAN",
        "VON",
        "Y",
    ]
)
_COMMON_FIRST = frozenset(("MARIA", "MA", "JOSE", "J"))
_COMPANY_WORDS = frozenset(
    [
        "S",
        "A",
        "C",
        "V",
        "SA",
        "CV",
        "SC",
        "DE",
        "DEL",
        "LA",
        "LAS",
        "LOS",
        "EL",
        "Y",
        "SOCIEDAD",
        "CIVIL",
        "ANONIMA",
        "CAPITAL",
        "VARIABLE",
    ]
)
_VOWELS = "AEIOU"
_CURP_CHARS = "0123456789ABCDEFGHIJKLMNÑOPQRSTUVWXYZ"
_RFC_CHARS = "0123456789ABCDEFGHIJKLMN&OPQRSTUVWXYZ Ñ"
_HOMOCLAVE_CHARS = "123456789ABCDEFGHIJKLMNPQRSTUVWXYZ"


@dataclass(frozen=True)
class Person:
    first_name: str
    last_name: str | None  # primer apellido
    second_last_name: str | None  # segundo apellido
    sex: str | None  # 'F' | 'M' | 'X'
    birth_date: date | None


def random_person(rng: random.Random, birth_date: date | None, sex: str | None) -> Person:
    """A person with a Spanish name: accents and ñ, compound names, sometimes one surname."""
    female = sex == "F" or (sex not in ("F", "M") and rng.random() < 0.5)
    first = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
    last = rng.choice(COMPOUND_SURNAMES) if rng.random() < 0.04 else rng.choice(SURNAMES)
    second = None if rng.random() < 0.1 else rng.choice(SURNAMES)
    return Person(first, last, second, sex, birth_date)


def full_name(person: Person) -> str:
    return " ".join(p for p in (person.first_name, person.last_name, person.second_last_name) if p)


def ascii_fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def email_for(person: Person, rng: random.Random, domain: str) -> str:
    """An address at a reserved example domain (RFC 2606): no real mailbox can ever be hit."""
    first = ascii_fold(person.first_name.split()[0]).lower()
    last = ascii_fold((person.last_name or "paciente").replace(" ", "")).lower()
    style = rng.randrange(3)
    local = (
        f"{first}.{last}"
        if style == 0
        else f"{first[0]}{last}"
        if style == 1
        else f"{first}_{last}"
    )
    if rng.random() < 0.5:
        local += str(rng.randint(1, 99))
    return f"{local}@{domain}"


def phone_for(rng: random.Random, area_code: str) -> str:
    """A ten-digit Mexican number written the way people write it: +52, area code, groups."""
    rest = "".join(str(rng.randint(0, 9)) for _ in range(10 - len(area_code)))
    rest = str(rng.randint(2, 9)) + rest[1:]
    if len(rest) == 8:
        return f"+52 {area_code} {rest[:4]} {rest[4:]}"
    return f"+52 {area_code} {rest[:3]} {rest[3:]}"


# --- CURP (Clave Única de Registro de Población) ----------------------------------------------


def _key_text(text: str | None) -> list[str]:
    """Upper-case words with Ñ as X, accents and punctuation removed, as the key rules require."""
    if not text:
        return []
    upper = text.upper().replace("Ñ", "X")
    folded = re.sub(r"[^A-Z ]", " ", ascii_fold(upper))
    return folded.split()


def _significant(text: str | None, *, first_name: bool = False) -> str:
    words = [w for w in _key_text(text) if w not in _PARTICLES]
    if first_name and len(words) > 1 and words[0] in _COMMON_FIRST:
        words = words[1:]
    return words[0] if words else ""


def _first_internal(word: str, consonant: bool) -> str:
    for c in word[1:]:
        if (c not in _VOWELS) == consonant:
            return c
    return "X"


def curp_check_digit(first17: str) -> str:
    total = sum(_CURP_CHARS.index(c) * (18 - i) for i, c in enumerate(first17))
    return str((10 - total % 10) % 10)


def curp_for(person: Person, state_code: str, rng: random.Random) -> str | None:
    """The CURP RENAPO would assign (letters, birth date, sex, state, consonants, homoclave, digit)."""
    if person.birth_date is None or person.sex not in ("F", "M"):
        return None
    last = _significant(person.last_name)
    second = _significant(person.second_last_name)
    name = _significant(person.first_name, first_name=True)
    if not last or not name:
        return None
    letters = last[0] + _first_internal(last, consonant=False) + (second[:1] or "X") + name[0]
    if letters in _INCONVENIENT:
        letters = letters[0] + "X" + letters[2:]
    born = person.birth_date
    consonants = (
        _first_internal(last, consonant=True)
        + (_first_internal(second, consonant=True) if second else "X")
        + _first_internal(name, consonant=True)
    )
    # The 17th character tells births before 2000 (a digit) from later ones (a letter).
    homoclave = (
        str(rng.randint(0, 9)) if born.year < 2000 else rng.choice("ABCDEFGHIJKLMNPQRSTUVWXYZ")
    )
    first17 = f"{letters}{born:%y%m%d}{'M' if person.sex == 'F' else 'H'}{state_code}{consonants}{homoclave}"
    return first17 + curp_check_digit(first17)


# --- RFC (Registro Federal de Contribuyentes) ---------------------------------------------------


def rfc_check_digit(without_digit: str) -> str:
    """SAT's modulo-11 digit; a persona moral's 11 characters are padded to 12 with a space."""
    padded = without_digit.rjust(12)
    total = sum(_RFC_CHARS.index(c) * (13 - i) for i, c in enumerate(padded))
    remainder = total % 11
    if remainder == 0:
        return "0"
    digit = 11 - remainder
    return "A" if digit == 10 else str(digit)


def _homoclave(rng: random.Random, prefix: str) -> str:
    body = prefix + rng.choice(_HOMOCLAVE_CHARS) + rng.choice(_HOMOCLAVE_CHARS)
    return body + rfc_check_digit(body)


def rfc_persona_fisica(person: Person, rng: random.Random) -> str | None:
    if person.birth_date is None:
        return None
    last = _significant(person.last_name)
    second = _significant(person.second_last_name)
    name = _significant(person.first_name, first_name=True)
    if not last or not name:
        return None
    if second:
        letters = last[0] + _first_internal(last, consonant=False) + second[0] + name[0]
    else:  # one surname: two letters of it and two of the name
        letters = (last[:2] + name[:2]).ljust(4, "X")
    if letters in _INCONVENIENT:
        letters = letters[:3] + "X"
    return _homoclave(rng, f"{letters}{person.birth_date:%y%m%d}")


def rfc_persona_moral(legal_name: str, founded: date, rng: random.Random) -> str:
    words = [w for w in _key_text(legal_name) if w not in _COMPANY_WORDS]
    if len(words) >= 3:
        letters = words[0][0] + words[1][0] + words[2][0]
    elif len(words) == 2:
        letters = words[0][0] + words[1][:2]
    else:
        letters = (words[0] if words else "XXX")[:3]
    return _homoclave(rng, f"{letters.ljust(3, 'X')}{founded:%y%m%d}")
