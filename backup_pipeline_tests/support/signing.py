"""Throwaway Google service-account keys for tests that sign V4 links (never a real key)."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def new_private_key(key_size: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def private_key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def service_account_info(
    key: rsa.RSAPrivateKey, client_email: str, *, key_id: str = "test-key-1"
) -> dict[str, Any]:
    """What a service-account JSON key file holds, for google.oauth2.service_account."""
    return {
        "type": "service_account",
        "project_id": "clinic-platform",
        "private_key_id": key_id,
        "private_key": private_key_pem(key),
        "client_email": client_email,
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
