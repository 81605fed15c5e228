"""Safe, unique archive names made from untrusted text (uploaded file names, patient names)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date

from slugify import slugify

MAX_COMPONENT_BYTES = 255  # ext4, APFS and NTFS all stop at 255 (bytes or UTF-16 units)
_MIN_COMPONENT_BYTES = 64  # room for a stem, an extension and a " (n)" counter
_MIN_COMPONENT_UNITS = 32  # the same room in UTF-16 units (an extension takes at most 17)
# Windows Explorer's extractor fails past 260 UTF-16 units of full path, and a clinic extracts
# into about 'C:\Users\<name>\Downloads\<zip name>\' (35 units plus the zip's name): every
# entry path stays within 140 units and the zip's own name within 70.
MAX_PATH_UNITS = 140
MAX_DOWNLOAD_NAME_UNITS = 70
# '<Apellidos Nombre> (<id>)' at most this, so that a patient's files keep at least 70 units.
PATIENT_FOLDER_MAX_UNITS = 60

ATTACHMENTS_FOLDER = "adjuntos"
PATIENT_FALLBACK = "Paciente"

_WINDOWS_FORBIDDEN = frozenset('<>:"/\\|?*')
# Zero-width joiners are format characters but hold emoji sequences and some scripts together.
_KEPT_FORMAT_CHARS = frozenset("\u200c\u200d")
_RESERVED_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"}
    | {f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789¹²³"}
)
# An extension worth keeping when a name is shortened: a short dot-suffix without spaces.
_EXTENSION = re.compile(r"(?<=[^.])\.[^.\s]{1,16}$")
_MAX_EXTENSION_UNITS = 17
# The clinic's slug in the download name: 'respaldo_' + 40 + '_YYYY-MM-DD.zip' is 64 units.
_DOWNLOAD_SLUG_MAX = 40
_DOWNLOAD_NAME = re.compile(r"(respaldo_)(.+)(_\d{4}-\d{2}-\d{2})")


def utf16_units(text: str) -> int:
    """A name's length as Windows counts it: UTF-16 code units (an emoji counts two)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@dataclass(frozen=True)
class _Limit:
    """How long a name may be: UTF-8 bytes (what Linux and macOS count) and UTF-16 units."""

    bytes: int
    units: int

    @classmethod
    def of(cls, max_bytes: int, max_units: int | None) -> _Limit:
        return cls(max_bytes, MAX_COMPONENT_BYTES if max_units is None else max_units)

    def fits(self, text: str) -> bool:
        if text.isascii():  # one byte and one unit per character
            return len(text) <= self.bytes and len(text) <= self.units
        # Every UTF-16 unit is at least one UTF-8 byte: most names are decided by the first test.
        if len(text) <= self.units and len(text.encode("utf-8", "surrogatepass")) <= self.bytes:
            return utf16_units(text) <= self.units
        return False

    def minus(self, text: str) -> _Limit:
        return _Limit(
            self.bytes - len(text.encode("utf-8", "surrogatepass")), self.units - utf16_units(text)
        )


@dataclass(frozen=True)
class Named:
    """A path in the archive, and whether a length limit cut part of the name it came from."""

    path: str
    shortened: bool


def safe_component(
    name: str,
    *,
    fallback: str,
    max_bytes: int = MAX_COMPONENT_BYTES,
    max_units: int | None = None,
) -> str:
    """One file or folder name, safe on Windows, macOS and Linux, made from untrusted text.

    NFC-normalised; path separators, characters Windows forbids and control characters
    replaced or dropped; no leading or trailing dots or spaces; Windows device names
    ('CON', 'nul.txt', 'COM¹') prefixed with '_'; at most max_bytes of UTF-8 and max_units
    UTF-16 units (255 when None), shortened on a character boundary keeping the start and the
    extension. '.', '..' and what cleans to nothing become fallback, which must itself be safe.
    Applying it to its own output changes nothing.
    """
    return _safe(name, fallback, _checked_limit(max_bytes, max_units))


def _checked_limit(max_bytes: int, max_units: int | None) -> _Limit:
    if max_bytes < _MIN_COMPONENT_BYTES:
        raise ValueError(f"max_bytes must be at least {_MIN_COMPONENT_BYTES}, got {max_bytes}")
    if max_units is not None and max_units < _MIN_COMPONENT_UNITS:
        raise ValueError(f"max_units must be at least {_MIN_COMPONENT_UNITS}, got {max_units}")
    return _Limit.of(max_bytes, max_units)


def _safe(name: str, fallback: str, limit: _Limit) -> str:
    cleaned = _fit(_clean(name), limit)
    if cleaned:
        return cleaned
    if not fallback or _fit(_clean(fallback), limit) != fallback:
        raise ValueError("fallback must be a non-empty safe name")
    return fallback


def patient_folder(
    last_name: str | None,
    second_last_name: str | None,
    first_name: str | None,
    patient_id: int,
    *,
    max_bytes: int = MAX_COMPONENT_BYTES,
    max_units: int = PATIENT_FOLDER_MAX_UNITS,
) -> str:
    """'adjuntos/<Apellidos Nombre> (<id>)': the id keeps two patients with one name apart,
    so the name is shortened, never the id."""
    return named_patient_folder(
        last_name,
        second_last_name,
        first_name,
        patient_id,
        max_bytes=max_bytes,
        max_units=max_units,
    ).path


def named_patient_folder(
    last_name: str | None,
    second_last_name: str | None,
    first_name: str | None,
    patient_id: int,
    *,
    max_bytes: int = MAX_COMPONENT_BYTES,
    max_units: int = PATIENT_FOLDER_MAX_UNITS,
) -> Named:
    """patient_folder, and whether the patient's name was shortened to fit."""
    suffix = f" ({int(patient_id)})"
    words = " ".join(
        part.strip() for part in (last_name, second_last_name, first_name) if part and part.strip()
    )
    limit = _Limit.of(max_bytes, max_units).minus(suffix)
    if limit.units < 1 or limit.bytes < 1:
        raise ValueError(f"no room for a name beside the patient id {int(patient_id)}")
    full = _clean(words)
    name = _fit(full, limit) or PATIENT_FALLBACK
    # Still safe with the suffix: it ends the name with ')', and the part before the first dot
    # (which decides a reserved name) is the clean name's own or has ' (' in it.
    return Named(f"{ATTACHMENTS_FOLDER}/{name}{suffix}", shortened=bool(full) and name != full)


class UniqueNames:
    """Hands out names unique within each folder, ignoring case as Windows and macOS do.

    In input order the first 'foto.png' keeps its name and a later 'Foto.PNG' becomes
    'Foto (2).PNG', so the same input always gives the same archive. Each name is shortened so
    that '<folder>/<name>' stays within max_path_units UTF-16 units (None: only the component
    limits).
    """

    def __init__(
        self, max_bytes: int = MAX_COMPONENT_BYTES, *, max_path_units: int | None = MAX_PATH_UNITS
    ) -> None:
        self._max_bytes = max_bytes
        self._max_path_units = max_path_units
        self._taken: dict[str, set[tuple[int, str]]] = {}
        self._limits: dict[str, _Limit] = {}
        # The last number handed out per (folder, base): every lower one is taken for good, so
        # the search resumes there. Without it n uploads named 'image.jpg' try n²/2 names.
        self._last_number: dict[tuple[str, str], int] = {}

    def path(self, folder: str, name: str, *, fallback: str) -> str:
        """'<folder>/<name made safe and unique in folder>'."""
        return self.named(folder, name, fallback=fallback).path

    def named(self, folder: str, name: str, *, fallback: str) -> Named:
        """path(), and whether a length limit cut part of `name`."""
        taken = self._taken.setdefault(folder, set())
        limit = self._limit(folder)
        full = _clean(name)
        base = _fit(full, limit) if full else _safe(fallback, fallback, limit)
        number = self._last_number.get((folder, base), 1)
        candidate = base if number == 1 else _numbered_within(base, number, limit)
        while not taken.isdisjoint(collision_keys(candidate)):
            number += 1
            candidate = _numbered_within(base, number, limit)
        taken.update(collision_keys(candidate))
        if number > 1:  # 1 is where every search starts: only a base seen twice is remembered
            self._last_number[(folder, base)] = number
        shortened = bool(full) and (
            base != full or (number > 1 and not limit.fits(_with_number(base, number)))
        )
        return Named(f"{folder}/{candidate}", shortened)

    def _limit(self, folder: str) -> _Limit:
        limit = self._limits.get(folder)
        if limit is None:
            units = None
            if self._max_path_units is not None:
                units = min(self._max_path_units - utf16_units(folder) - 1, MAX_COMPONENT_BYTES)
            limit = self._limits[folder] = _checked_limit(self._max_bytes, units)
        return limit


def collision_keys(name: str) -> tuple[tuple[int, str], ...]:
    """What must differ between two names of one folder for both to survive on every system.

    Two names collide when any key is equal: equal ignoring case (casefold, on NFC as the zip
    holds it), canonically equal ignoring case (macOS also ignores NFC/NFD), or equal in
    upper case (Windows' own folding, which maps 'ı' to 'I' where casefold keeps them apart).
    """
    if name.isascii():  # most names: no accents to normalise, and casefold is lower()
        lower = name.lower()
        return ((0, lower), (1, lower), (2, name.upper()))
    nfc = unicodedata.normalize("NFC", name)
    return (
        (0, nfc.casefold()),
        (1, unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())),
        (2, nfc.upper()),
    )


def _clean(text: str) -> str:
    """The name made safe, before any length limit."""
    # Filtering can bring a combining mark next to its base, so normalise once more after it.
    text = _filter_chars(unicodedata.normalize("NFC", str(text)))
    text = _filter_chars(unicodedata.normalize("NFC", text))
    # A leading dot hides a file in Finder and on Linux; the clinic must see every file.
    text = text.strip(" .")
    if _is_reserved(text):
        text = "_" + text
    return text


def _fit(text: str, limit: _Limit) -> str:
    """A clean name within `limit`: its start and its extension kept."""
    if limit.fits(text):
        return text
    fitted = _shorten(text, limit).rstrip(" .")
    if _is_reserved(fitted):  # the cut left 'CON .pdf' of 'CON  something.pdf'
        fitted = _shorten("_" + fitted, limit).rstrip(" .")
    return fitted


def _filter_chars(text: str) -> str:
    return text.translate(_CHAR_MAP)


class _CharMap(dict[int, str | None]):
    """_filter_chars's rule for one character, as str.translate's table: each character's
    replacement is worked out the first time it is seen, then looked up in C (a large clinic's
    plan filters millions of characters)."""

    # Enough for every character a clinic's names use; a name made of rarer characters is still
    # filtered, without growing the table.
    MAX_REMEMBERED = 10_000

    def __missing__(self, code: int) -> str | None:
        char = chr(code)
        category = unicodedata.category(char)
        value: str | None
        if char in _WINDOWS_FORBIDDEN:
            value = "_"
        elif category in ("Cc", "Zl", "Zp"):
            # A tab or line break inside a name reads as a space; other controls go.
            value = " " if char.isspace() else None
        elif category == "Cs" or (category == "Cf" and char not in _KEPT_FORMAT_CHARS):
            # Lone surrogates cannot be encoded; bidi overrides disguise extensions.
            value = None
        else:
            value = char
        if len(self) < self.MAX_REMEMBERED:
            self[code] = value
        return value


_CHAR_MAP = _CharMap()


def _is_reserved(text: str) -> bool:
    # Windows resolves 'CON', 'con.txt' and 'CON .tar.gz' alike: the part before the first dot.
    return text.split(".", 1)[0].rstrip(" ").upper() in _RESERVED_DEVICES


def _split_extension(name: str) -> tuple[str, str]:
    match = _EXTENSION.search(name)
    if match is None or utf16_units(match.group()) > _MAX_EXTENSION_UNITS:
        return name, ""
    return name[: match.start()], match.group()


def _shorten(text: str, limit: _Limit) -> str:
    if limit.fits(text):
        return text
    stem, extension = _split_extension(text)
    return _cut(stem, limit.minus(extension)) + extension


def _cut(text: str, limit: _Limit) -> str:
    """The longest prefix of text within `limit`, cut between characters (never inside a
    surrogate pair), without a dangling zero-width joiner."""
    if limit.fits(text):
        return text
    units = max(limit.units, 0)
    cut = text.encode("utf-16-le", "surrogatepass")[: 2 * units].decode("utf-16-le", "ignore")
    encoded = cut.encode("utf-8", "surrogatepass")
    if len(encoded) > limit.bytes:
        cut = encoded[: max(limit.bytes, 0)].decode("utf-8", errors="ignore")
    return cut.rstrip("".join(_KEPT_FORMAT_CHARS))


def _with_number(name: str, number: int) -> str:
    stem, extension = _split_extension(name)
    return f"{stem} ({number}){extension}"


def _numbered_within(name: str, number: int, limit: _Limit) -> str:
    stem, extension = _split_extension(name)
    suffix = f" ({number}){extension}"
    return _cut(stem, limit.minus(suffix)) + suffix


def _numbered(name: str, number: int, max_bytes: int, max_units: int | None = None) -> str:
    """'<stem> (<number>)<extension>' within max_bytes (and max_units), the stem cut to fit."""
    return _numbered_within(name, number, _Limit.of(max_bytes, max_units))


def archive_file_name(clinic_name: str, day: date) -> str:
    """respaldo_<clinic-name-slug>_<YYYY-MM-DD>.zip, the name the clinic downloads (at most 64
    UTF-16 units: the slug is ASCII and at most 40 characters)."""
    slug = slugify(clinic_name, max_length=_DOWNLOAD_SLUG_MAX, word_boundary=True) or "clinica"
    return f"respaldo_{slug}_{day:%Y-%m-%d}.zip"


def archive_key(subscription_id: int, request_id: int, clinic_name: str, local_day: date) -> str:
    """Stable per request, so a re-run replaces its own archive instead of leaving a second one."""
    return f"respaldos/{subscription_id}/{request_id}/{archive_file_name(clinic_name, local_day)}"


def archive_folder(key: str) -> str:
    """'respaldos/<subscription>/<request>/': where a request's archive objects are, without the
    file name (which carries the clinic's name, kept out of logs and run metadata)."""
    return f"{key.rpartition('/')[0]}/"


def part_key(key: str, part: int, parts: int) -> str:
    """The key of part `part` of `parts`: the archive's own key when there is one part, else
    respaldo_<slug>_<date>_parte-<i>-de-<n>.zip beside it, the slug cut (the same for every
    part) where the name would pass MAX_DOWNLOAD_NAME_UNITS."""
    if parts == 1:
        return key
    folder, slash, name = key.rpartition("/")
    stem = name.removesuffix(".zip")

    def suffix(number: int) -> str:
        return f"_parte-{number}-de-{parts}.zip"

    # Budgeted by the longest part's suffix, so that every part keeps the same stem.
    stem = _fit_download_stem(stem, MAX_DOWNLOAD_NAME_UNITS - utf16_units(suffix(parts)))
    return f"{folder}{slash}{stem}{suffix(part)}"


def _fit_download_stem(stem: str, units: int) -> str:
    if utf16_units(stem) <= units:
        return stem
    match = _DOWNLOAD_NAME.fullmatch(stem)
    if match is None:
        return _cut(stem, _Limit(bytes=4 * units, units=units))
    prefix, slug, day = match.groups()
    room = units - utf16_units(prefix + day)
    cut = _cut(slug, _Limit(bytes=4 * max(room, 0), units=room))
    if slug[len(cut) : len(cut) + 1] not in ("", "-") and "-" in cut:
        cut = cut.rsplit("-", 1)[0]  # whole words, as the slug itself was made
    return f"{prefix}{cut.strip('-') or 'c'}{day}"


def download_name(archive_key: str) -> str:
    """The file name a browser saves the archive under: the key's last segment."""
    return archive_key.rsplit("/", 1)[-1]
