"""Reading a delivered archive back, and GCS credentials that can sign links on the emulator."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import openpyxl
from google.cloud import storage
from google.oauth2 import service_account
from openpyxl.workbook.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet

from backup_pipeline_tests.support.signing import (
    new_private_key,
    service_account_info,
)

SIGNER_EMAIL = "respaldos@clinic-platform.iam.gserviceaccount.com"


# --- GCS: a client whose credentials can sign V4 URLs, talking to the emulator -----------------


def signing_credentials() -> service_account.Credentials:
    """A service-account key (made here, never real) with a token that needs no refresh.

    The emulator accepts any bearer token; the key makes V4 signing work exactly as with a
    production key file. Without a live token the client would try to reach Google's OAuth.
    """
    credentials = service_account.Credentials.from_service_account_info(
        service_account_info(new_private_key(), SIGNER_EMAIL, key_id="acceptance-key"),
        scopes=storage.Client.SCOPE,
    )
    credentials.token = "emulator-token"
    credentials.expiry = datetime(2100, 1, 1)  # naive UTC, as google-auth keeps it
    return credentials


# --- Reading an archive back ----------------------------------------------------------------


@dataclass
class Archive:
    """A backup zip in memory, with its entries, workbooks and every byte inside them."""

    data: bytes
    zf: zipfile.ZipFile = field(init=False)

    def __post_init__(self) -> None:
        self.zf = zipfile.ZipFile(io.BytesIO(self.data))

    @property
    def names(self) -> list[str]:
        return self.zf.namelist()

    def read(self, name: str) -> bytes:
        return self.zf.read(name)

    def text(self, name: str) -> str:
        return self.read(name).decode("utf-8-sig")

    @cached_property
    def workbooks(self) -> dict[str, Workbook]:
        """Every .xlsx entry, loaded fully (not read_only) so that cell.data_type is the file's."""
        return {
            name: openpyxl.load_workbook(io.BytesIO(self.read(name)))
            for name in self.names
            if name.endswith(".xlsx")
        }

    def sheet_rows(self, workbook: str, sheet: int | str = 0) -> list[dict[str, Any]]:
        """A sheet's data rows as {header: value}; rows with no value at all are no rows."""
        book = self.workbooks[workbook]
        ws = book.worksheets[sheet] if isinstance(sheet, int) else book[sheet]
        return table_rows(ws)

    def blobs(self) -> Iterator[tuple[str, bytes]]:
        """(where, bytes) for every entry and, inside each .xlsx, every member decompressed."""
        for name in self.names:
            data = self.read(name)
            yield name, data
            if name.endswith(".xlsx"):
                with zipfile.ZipFile(io.BytesIO(data)) as inner:
                    for member in inner.namelist():
                        yield f"{name}!{member}", inner.read(member)


def headers(ws: Worksheet) -> list[str]:
    return [cell.value for cell in next(ws.iter_rows(min_row=1, max_row=1))]


def table_rows(ws: Worksheet) -> list[dict[str, Any]]:
    names = headers(ws)
    rows = []
    for values in ws.iter_rows(min_row=2, values_only=True):
        if any(value is not None for value in values):
            rows.append(dict(zip(names, values, strict=True)))
    return rows
