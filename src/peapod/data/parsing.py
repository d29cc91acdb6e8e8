"""Small helpers shared by the readers: UTF-8 decoding and JSON parsing that report file and line."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from peapod.data.dataset import DataError

_WS = re.compile(r"[ \t\n\r]*")


def decode_utf8(data: bytes, path: str) -> str:
    """`data` as text; a non-UTF-8 byte becomes a DataError naming its line and column."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column})", path, line) from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not content


def load_json(text: str, path: str):
    """`json.loads` whose syntax errors name the file and line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path, e.lineno) from None


def iter_jsonl(text: str, path: str) -> Iterator[tuple[int, object]]:
    """(line number, value) for every non-blank line of a JSON Lines text."""
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path, lineno) from None


class _LineCounter:
    """Line number of increasing offsets in one text, counted incrementally (files can be 20 MB)."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        if pos < self.pos:  # only on error paths
            return self.text.count("\n", 0, pos) + 1
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def iter_json_records(text: str, path: str, keys: tuple[str, ...]) -> Iterator[tuple[str | None, object, int]]:
    """(key, record, line) for each element of a JSON object of lists (`{"train": [...], ...}`) or a JSON list.

    Records of a top-level list come with key None. The text is walked with the C scanner's `raw_decode`
    one record at a time so every record keeps its line number for error messages.
    """
    decoder = json.JSONDecoder()
    lines = _LineCounter(text)

    def fail(message: str, pos: int):
        raise DataError(message, path, lines.at(pos))

    def skip(pos: int) -> int:
        return _WS.match(text, pos).end()

    def decode(pos: int):
        try:
            return decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path, e.lineno) from None

    def expect(pos: int, chars: str, what: str) -> str:
        if pos >= len(text) or text[pos] not in chars:
            fail(f"invalid JSON: expecting {what}", pos)
        return text[pos]

    def iter_list(pos: int, key: str | None):
        """Yield the records of the list opening at `pos`; the final value is the position after it."""
        pos = skip(pos + 1)
        if pos < len(text) and text[pos] == "]":
            return pos + 1
        while True:
            start = pos
            record, pos = decode(pos)
            yield key, record, lines.at(start)
            pos = skip(pos)
            if expect(pos, ",]", "',' or ']'") == "]":
                return pos + 1
            pos = skip(pos + 1)

    pos = skip(0)
    if pos >= len(text):
        raise DataError("empty file", path, 1)
    opener = expect(pos, "{[", f"a JSON object with lists {', '.join(keys)} (or a JSON list)")
    if opener == "[":
        pos = yield from iter_list(pos, None)
    else:
        pos = skip(pos + 1)
        if pos < len(text) and text[pos] == "}":
            pos += 1
        else:
            while True:
                key_pos = pos
                key, pos = decode(pos)
                if not isinstance(key, str):
                    fail("invalid JSON: object keys must be strings", key_pos)
                if key not in keys:
                    fail(f"unknown key {key!r}; expected {', '.join(keys)}", key_pos)
                pos = skip(pos)
                expect(pos, ":", "':'")
                pos = skip(pos + 1)
                expect(pos, "[", f"a list of records under {key!r}")
                pos = yield from iter_list(pos, key)
                pos = skip(pos)
                if expect(pos, ",}", "',' or '}'") == "}":
                    pos += 1
                    break
                pos = skip(pos + 1)
    pos = skip(pos)
    if pos != len(text):
        fail("invalid JSON: extra data after the top-level value", pos)
