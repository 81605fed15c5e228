"""The "tú" forms a text for the clinic must not have: the clinic is addressed as "usted"."""

from __future__ import annotations

import re

# Second-person singular ("tú") forms, chosen so that none is also a correct "usted" form or an
# ordinary third-person word: "indica", "abre", "revisa" are left out as bare words because
# "el archivo indica..." is correct; as the first word of a sentence they are imperatives
# (not after "¿": "¿Usa hilo dental?" asks "usted").
TU_WORDS = {
    "tú", "tu", "tus", "te", "ti", "contigo", "tuyo", "tuya", "tuyos", "tuyas",
    "eres", "estás", "tienes", "puedes", "quieres", "necesitas", "debes", "sabes", "has",
    "recibes", "solicitas", "deseas", "vas", "olvides",
    "escríbenos", "contáctanos", "comunícate", "asegúrate", "fíjate", "descárgalo",
    "descárgala", "guárdalo", "guárdala", "ábrelo", "ábrela", "revísalo", "compártelo",
    "cámbialo", "cuídala", "cuídalo", "bórralo", "consérvalo", "respóndenos",
}  # fmt: skip
TU_SENTENCE_STARTS = {
    "abre", "revisa", "cambia", "escribe", "descarga", "cuida", "responde", "indica",
    "recuerda", "intenta", "guarda", "comparte", "elimina", "verifica", "copia",
    "pega", "presiona", "solicita", "comprueba",
}  # fmt: skip
# Future ("recibirás") and preterite ("solicitaste") of the second person, with the ordinary
# words that merely end the same way.
_TU_FUTURE = re.compile(r"\w+rás$")
_TU_PRETERITE = re.compile(r"\w+(aste|iste)$")
_NOT_TU = {
    "atrás", "detrás", "existe", "consiste", "insiste", "resiste", "asiste", "persiste",
    "subsiste", "desiste", "coexiste", "triste", "chiste", "contraste", "desgaste", "baste",
    "gaste", "engaste",
}  # fmt: skip
_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_START = re.compile(r"(?:^|[.!?:;¡\n]\s*|^\s*[-*]\s*)(\w+)", re.MULTILINE)


def tu_forms(text: str) -> list[str]:
    """The "tú" forms in `text`, as written."""
    found = []
    for word in _WORD.findall(text):
        lower = word.lower()
        if lower in _NOT_TU:
            continue
        if lower in TU_WORDS or _TU_FUTURE.fullmatch(lower) or _TU_PRETERITE.fullmatch(lower):
            found.append(word)
    found += [word for word in _SENTENCE_START.findall(text) if word.lower() in TU_SENTENCE_STARTS]
    return found
