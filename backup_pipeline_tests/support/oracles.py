"""The product's rules stated again, independently of its code, for tests to check it against."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath


def stays_in_the_archive(path: str) -> bool:
    """Whether an entry extracted anywhere (by unzip on Linux or macOS, or Explorer and 7-Zip on
    Windows, which take '\\' for a folder separator and 'C:' for a drive) lands inside the
    folder it is extracted into: not empty, no root, no drive, no '..' step. A '\\' is refused
    whatever it would do: the zip format's separator is '/', and a '\\' is a name's character
    to one tool and a folder separator to another."""
    if not path or "\\" in path:
        return False
    posix, windows = PurePosixPath(path), PureWindowsPath(path)
    if posix.is_absolute() or windows.drive or windows.root:
        return False
    return ".." not in posix.parts and ".." not in windows.parts


def _is_xml_char(char: str) -> bool:
    # XML 1.0, production [2] Char: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] |
    # [#x10000-#x10FFFF].
    code = ord(char)
    return (
        code in (0x9, 0xA, 0xD)
        or 0x20 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    )


def as_the_clinic_wrote_it(text: str) -> str:
    """What a workbook cell shows for a text the clinic wrote (PRODUCT.md, "Text is always text"):
    the text itself, without the characters XML cannot hold, each line break (CRLF, CR) as LF."""
    kept = "".join(char for char in text if _is_xml_char(char))
    return kept.replace("\r\n", "\n").replace("\r", "\n")
