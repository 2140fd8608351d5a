"""Token text on character boundaries: the raw bytes of byte-level BPE tokens that hold part of a
UTF-8 character, and the whole characters a run of tokens spells (see
:meth:`workbench.trace.TraceMethods.text_of`)."""

from __future__ import annotations

import re

import numpy as np

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-printable-character map (byte-level BPE vocabularies)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_DECODER = _byte_decoder()


def _token_raw(tokenizer, token_id: int) -> bytes | None:
    """The bytes a token stands for, from its vocabulary piece (byte-level BPE, or SentencePiece
    byte fallback ``<0xNN>``); None when the piece is neither."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(piece, str) or not piece:
        return None
    match = _BYTE_PIECE.fullmatch(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    if all(c in _BYTE_DECODER for c in piece):
        return bytes(_BYTE_DECODER[c] for c in piece)
    return None


def partial_token_bytes(tokenizer, token_ids) -> dict[str, str]:
    """``{str(id): hex}`` of the tokens that are not whole characters on their own.

    A byte-level BPE token can hold part of a multi-byte UTF-8 character (``"¿"`` is two tokens in
    many vocabularies); decoded alone, each part is ``"�"``. A trace keeps these tokens' bytes in
    ``meta["token_bytes"]`` so that :meth:`TraceMethods.text_of` and
    :meth:`TraceMethods.token_labels` decode whole characters across tokens.

    Example:
        >>> from workbench.testing import tiny_tokenizer
        >>> tok = tiny_tokenizer()
        >>> ids = tok("¿Hola?", add_special_tokens=False)["input_ids"]
        >>> [tok.decode([i]) for i in ids][:2], sorted(partial_token_bytes(tok, ids).values())
        (['�', '�'], ['bf', 'c2'])
    """
    out = {}
    for t in np.unique(np.asarray(list(token_ids), dtype=np.int64)):
        if "\ufffd" not in tokenizer.decode([int(t)]):
            continue
        raw = _token_raw(tokenizer, int(t))
        if raw is None:
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            out[str(int(t))] = raw.hex()
    return out


def _raw_bytes(meta: dict) -> dict[int, bytes]:
    hexes = meta.get("token_bytes") or {}
    key = (id(hexes), len(hexes))
    cached = _RAW_CACHE.get(key)
    if cached is None or cached[0] is not hexes:
        cached = (hexes, {int(k): bytes.fromhex(v) for k, v in hexes.items()})
        if len(_RAW_CACHE) > 64:
            _RAW_CACHE.clear()
        _RAW_CACHE[key] = cached
    return cached[1]


_RAW_CACHE: dict = {}


def _char_length(lead: int) -> int:
    if lead < 0x80:
        return 1
    if 0xC2 <= lead < 0xE0:
        return 2
    if 0xE0 <= lead < 0xF0:
        return 3
    if 0xF0 <= lead < 0xF5:
        return 4
    return 1


def _continuation(b: int) -> bool:
    return 0x80 <= b < 0xC0


def char_spans(pieces: list[bytes]) -> list[tuple[str, int, int]]:
    """``(character, first piece, last piece)`` of the UTF-8 text the byte ``pieces`` make together.

    A window of tokens may start or end inside a character: the cut-off bytes at either edge are one
    ``"…"``; an invalid byte inside is one ``"�"``.

    Example:
        >>> char_spans([b"a\\xc2", b"\\xbfb"])
        [('a', 0, 0), ('¿', 0, 1), ('b', 1, 1)]
        >>> [c for c, _, _ in char_spans([b"\\xbf", b"ni\\xc3\\xb1o \\xe6\\x97"])]
        ['…', 'n', 'i', 'ñ', 'o', ' ', '…']
    """
    owner = [i for i, p in enumerate(pieces) for _ in range(len(p))]
    buf = b"".join(pieces)
    out, i = [], 0
    if buf and _continuation(buf[0]):  # the window starts inside a character
        while i < len(buf) and i < 3 and _continuation(buf[i]):
            i += 1
        out.append(("…", owner[0], owner[i - 1]))
    while i < len(buf):
        n = _char_length(buf[i])
        try:
            char = buf[i:i + n].decode("utf-8")
        except UnicodeDecodeError:
            rest = buf[i + 1:]
            if n > 1 and i + n > len(buf) and all(_continuation(b) for b in rest):  # cut at the window's end
                out.append(("…", owner[i], owner[-1]))
                break
            char, n = "\ufffd", 1
        out.append((char, owner[i], owner[i + n - 1]))
        i += n
    return out


def token_labels(pieces: list[bytes]) -> list[str]:
    """One label per byte piece on character boundaries (see :meth:`TraceMethods.token_labels`).

    Example:
        >>> token_labels([b"\\xc2", b"\\xbfHola"])
        ['¿…', '…¿Hola']
    """
    labels = [[] for _ in pieces]
    for char, first, last in char_spans(pieces):
        for j in range(first, last + 1):
            labels[j].append(("…" if j > first else "") + char + ("…" if j < last else ""))
    return ["".join(parts) for parts in labels]


def _bytes_string(raw: bytes) -> str:
    """Whole characters of ``raw`` as text, every byte of a partial character as ``‹hex›``."""
    out, i = [], 0
    while i < len(raw):
        n = _char_length(raw[i])
        try:
            out.append(raw[i:i + n].decode("utf-8"))
        except UnicodeDecodeError:
            out.append(f"‹{raw[i]:02x}›")
            n = 1
        i += n
    return "".join(out)
