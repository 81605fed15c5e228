"""Valid PNG, JPEG and PDF bytes of a chosen size, generated deterministically and streamed to a writer."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Sequence
from typing import Protocol


class Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
PDF_HEADER = b"%PDF-"

_CHUNK = 1 << 16

# A complete 8x8 grey baseline JPEG: JFIF APP0, a quantisation table of ones, one-symbol Huffman
# tables (DC category 0, AC end-of-block), one block whose bits are "00" padded with ones.
_JPEG_APP0 = bytes.fromhex("ffe000104a46494600010100000100010000")
_JPEG_TAIL = (
    bytes.fromhex("ffdb004300")
    + b"\x01" * 64
    + bytes.fromhex("ffc0000b080008000801011100")
    + bytes.fromhex("ffc4001400") + b"\x01" + b"\x00" * 15 + b"\x00"
    + bytes.fromhex("ffc4001410") + b"\x01" + b"\x00" * 15 + b"\x00"
    + bytes.fromhex("ffda0008010100003f00")
    + b"\x3f"
    + b"\xff\xd9"
)  # fmt: skip
TINY_JPEG = JPEG_SOI + _JPEG_APP0 + _JPEG_TAIL
_JPEG_MAX_SEGMENT = 65533  # payload of one COM segment (its length field counts itself)


def _grey_tables() -> list[bytes]:
    """Byte maps that squeeze noise into a band of grey, darker at the edges like a radiograph."""
    tables = []
    for band in range(16):
        centre = 70 + int(90 * (1 - abs(band - 7.5) / 7.5))
        low, span = max(0, centre - 40), 80
        tables.append(bytes(low + (i * span) // 256 for i in range(256)))
    return tables


_GREY = _grey_tables()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_dimensions(approx_size: int, channels: int, rng: random.Random) -> tuple[int, int]:
    """Width and height whose uncompressed (stored) image data comes close to approx_size."""
    width = rng.choice((640, 800, 1024, 1280))
    width = max(1, min(width, approx_size // (channels * 4) or 1))
    height = max(1, (approx_size - 200) // (width * channels + 1))
    return width, height


def write_png(out: Writer, rng: random.Random, approx_size: int, *, colour: bool = False) -> None:
    """A noisy PNG (grey or RGB) of about approx_size bytes, stored uncompressed so size is exact-ish."""
    channels = 3 if colour else 1
    width, height = png_dimensions(approx_size, channels, rng)
    out.write(PNG_SIGNATURE)
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if colour else 0, 0, 0, 0)
    out.write(_png_chunk(b"IHDR", header))
    out.write(_png_chunk(b"tEXt", b"Software\x00backup_pipeline synthetic data"))
    row_len = width * channels
    rows_per_block = max(1, _CHUNK // (row_len + 1))
    compressor = zlib.compressobj(0)  # noise does not compress; stored blocks are fast and sized
    for first_row in range(0, height, rows_per_block):
        rows = min(rows_per_block, height - first_row)
        table = _GREY[(first_row * 16) // height]
        pixels = rng.randbytes(rows * row_len).translate(table)
        block = bytearray(rows * (row_len + 1))  # filter byte 0 (None) before each row
        for r in range(rows):
            start = r * (row_len + 1) + 1
            block[start : start + row_len] = pixels[r * row_len : (r + 1) * row_len]
        data = compressor.compress(bytes(block))
        if data:
            out.write(_png_chunk(b"IDAT", data))
    out.write(_png_chunk(b"IDAT", compressor.flush()))
    out.write(_png_chunk(b"IEND", b""))


def write_jpeg(out: Writer, rng: random.Random, approx_size: int) -> None:
    """The tiny JPEG, grown to approx_size with comment segments (skipped by every decoder)."""
    out.write(JPEG_SOI + _JPEG_APP0)
    remaining = approx_size - len(TINY_JPEG)
    while remaining > 4:
        payload = min(_JPEG_MAX_SEGMENT, remaining - 4)
        out.write(b"\xff\xfe" + struct.pack(">H", payload + 2) + rng.randbytes(payload))
        remaining -= payload + 4
    out.write(_JPEG_TAIL)


def _pdf_text(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return escaped.encode("cp1252", errors="replace")


def write_pdf(
    out: Writer, rng: random.Random, approx_size: int, title: str, lines: Sequence[str]
) -> None:
    """A one-page PDF with Helvetica text, padded by an unreferenced binary stream to approx_size."""
    content = bytearray(b"BT\n/F1 16 Tf\n72 730 Td\n(" + _pdf_text(title) + b") Tj\n/F1 11 Tf\n")
    for line in lines:
        content += b"0 -18 Td\n(" + _pdf_text(line) + b") Tj\n"
    content += b"ET\n"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(content) + bytes(content) + b"\nendstream",
    ]
    head = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(head))
        head += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    filler = max(0, approx_size - len(head) - 400)
    out.write(bytes(head))
    position = len(head)
    count = len(objects)
    if filler:
        count += 1
        offsets.append(position)
        start = b"%d 0 obj\n<< /Length %d >>\nstream\n" % (count, filler)
        out.write(start)
        left = filler
        while left:
            piece = min(_CHUNK, left)
            out.write(rng.randbytes(piece))
            left -= piece
        end = b"\nendstream\nendobj\n"
        out.write(end)
        position += len(start) + filler + len(end)
    xref = bytearray(b"xref\n0 %d\n0000000000 65535 f \n" % (count + 1))
    for offset in offsets:
        xref += b"%010d 00000 n \n" % offset
    xref += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (count + 1, position)
    out.write(bytes(xref))
