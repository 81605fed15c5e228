"""Safe, unique archive names made from untrusted text (uploaded file names, patient names)."""

from __future__ import annotations

import re
import unicodedata
from datetime import date

from slugify import slugify

MAX_COMPONENT_BYTES = 255  # ext4, APFS and NTFS all stop at 255 (bytes or UTF-16 units)
_MIN_COMPONENT_BYTES = 64  # room for a stem, an extension and a " (n)" counter

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


def safe_component(name: str, *, fallback: str, max_bytes: int = MAX_COMPONENT_BYTES) -> str:
    """One file or folder name, safe on Windows, macOS and Linux, made from untrusted text.

    NFC-normalised; path separators, characters Windows forbids and control characters
    replaced or dropped; no leading or trailing dots or spaces; Windows device names
    ('CON', 'nul.txt', 'COM¹') prefixed with '_'; at most max_bytes of UTF-8, shortened on a
    character boundary keeping the extension. '.', '..' and what cleans to nothing become
    fallback, which must itself be safe. Applying it to its own output changes nothing.
    """
    if max_bytes < _MIN_COMPONENT_BYTES:
        raise ValueError(f"max_bytes must be at least {_MIN_COMPONENT_BYTES}, got {max_bytes}")
    cleaned = _sanitize(name, max_bytes)
    if cleaned:
        return cleaned
    if _sanitize(fallback, max_bytes) != fallback or not fallback:
        raise ValueError("fallback must be a non-empty safe name")
    return fallback


def patient_folder(
    last_name: str | None,
    second_last_name: str | None,
    first_name: str | None,
    patient_id: int,
    *,
    max_bytes: int = MAX_COMPONENT_BYTES,
) -> str:
    """'adjuntos/<Apellidos Nombre> (<id>)': the id keeps two patients with one name apart,
    so the name is shortened, never the id."""
    suffix = f" ({int(patient_id)})"
    words = " ".join(
        part.strip() for part in (last_name, second_last_name, first_name) if part and part.strip()
    )
    # One byte spare for the '_' a reserved name could gain once the suffix is added.
    name = safe_component(words, fallback=PATIENT_FALLBACK, max_bytes=max_bytes - len(suffix) - 1)
    return f"{ATTACHMENTS_FOLDER}/{_sanitize(name + suffix, max_bytes)}"


class UniqueNames:
    """Hands out names unique within each folder, ignoring case as Windows and macOS do.

    In input order the first 'foto.png' keeps its name and a later 'Foto.PNG' becomes
    'Foto (2).PNG', so the same input always gives the same archive.
    """

    def __init__(self, max_bytes: int = MAX_COMPONENT_BYTES) -> None:
        self._max_bytes = max_bytes
        self._taken: dict[str, set[str]] = {}
        # The last number handed out per (folder, base): every lower one is taken for good, so
        # the search resumes there. Without it n uploads named 'image.jpg' try n²/2 names.
        self._last_number: dict[tuple[str, str], int] = {}

    def path(self, folder: str, name: str, *, fallback: str) -> str:
        """'<folder>/<name made safe and unique in folder>'."""
        taken = self._taken.setdefault(folder, set())
        base = safe_component(name, fallback=fallback, max_bytes=self._max_bytes)
        number = self._last_number.get((folder, base), 1)
        candidate = base if number == 1 else _numbered(base, number, self._max_bytes)
        while _fold(candidate) in taken:
            number += 1
            candidate = _numbered(base, number, self._max_bytes)
        taken.add(_fold(candidate))
        if number > 1:  # 1 is where every search starts: only a base seen twice is remembered
            self._last_number[(folder, base)] = number
        return f"{folder}/{candidate}"


def _sanitize(text: str, max_bytes: int) -> str:
    # Filtering can bring a combining mark next to its base, so normalise once more after it.
    text = _filter_chars(unicodedata.normalize("NFC", str(text)))
    text = _filter_chars(unicodedata.normalize("NFC", text))
    # A leading dot hides a file in Finder and on Linux; the clinic must see every file.
    text = text.strip(" .")
    if _is_reserved(text):
        text = "_" + text
    return _shorten(text, max_bytes).rstrip(" .")


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
    if match is None:
        return name, ""
    return name[: match.start()], match.group()


def _shorten(text: str, max_bytes: int) -> str:
    if len(text.encode("utf-8")) <= max_bytes:
        return text
    stem, extension = _split_extension(text)
    return _cut(stem, max_bytes - len(extension.encode("utf-8"))) + extension


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of text within max_bytes of UTF-8, cut between characters."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def _numbered(name: str, number: int, max_bytes: int) -> str:
    stem, extension = _split_extension(name)
    suffix = f" ({number}){extension}"
    return _cut(stem, max_bytes - len(suffix.encode("utf-8"))) + suffix


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name.casefold())


def archive_file_name(clinic_name: str, day: date) -> str:
    """respaldo_<clinic-name-slug>_<YYYY-MM-DD>.zip, the name the clinic downloads."""
    slug = slugify(clinic_name, max_length=60, word_boundary=True) or "clinica"
    return f"respaldo_{slug}_{day:%Y-%m-%d}.zip"


def archive_key(subscription_id: int, request_id: int, clinic_name: str, local_day: date) -> str:
    """Stable per request, so a re-run replaces its own archive instead of leaving a second one."""
    return f"respaldos/{subscription_id}/{request_id}/{archive_file_name(clinic_name, local_day)}"


def part_key(key: str, part: int, parts: int) -> str:
    """The key of part `part` of `parts`: the archive's own key when there is one part, else
    respaldo_<slug>_<date>_parte-<i>-de-<n>.zip beside it."""
    if parts == 1:
        return key
    stem = key.removesuffix(".zip")
    return f"{stem}_parte-{part}-de-{parts}.zip"


def download_name(archive_key: str) -> str:
    """The file name a browser saves the archive under: the key's last segment."""
    return archive_key.rsplit("/", 1)[-1]
