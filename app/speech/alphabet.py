"""DeepSpeech's `alphabet.txt`: one label per line, `#` comments, `\\#` for a literal hash; CTC blank is last."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path


class AlphabetError(ValueError):
    """The alphabet file is missing, empty or malformed."""


@dataclass(frozen=True)
class Alphabet:
    labels: tuple[str, ...]

    @classmethod
    def from_file(cls, path: str | Path) -> Alphabet:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise AlphabetError(f"cannot read alphabet file {path}: {exc.strerror}") from exc
        return cls.from_text(text, source=str(path))

    @classmethod
    def from_text(cls, text: str, source: str = "<alphabet>") -> Alphabet:
        # Same rules as upstream's Alphabet::init: strip the newline, skip lines starting with '#',
        # a line '\#' is the label '#'. A line holding a single space is the space label.
        labels: list[str] = []
        for line in text.split("\n"):
            line = line.rstrip("\r")
            if line.startswith("\\#"):
                labels.append("#")
            elif line.startswith("#") or line == "":
                continue
            else:
                labels.append(line)
        if not labels:
            raise AlphabetError(f"alphabet {source} has no labels")
        if len(set(labels)) != len(labels):
            raise AlphabetError(f"alphabet {source} lists a label twice")
        return cls(tuple(labels))

    @property
    def size(self) -> int:
        """Number of labels, without the CTC blank."""
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        """Output classes of the acoustic model: labels + blank (blank is the last class)."""
        return len(self.labels) + 1

    @property
    def blank_index(self) -> int:
        return len(self.labels)

    @property
    def space_index(self) -> int:
        try:
            return self.labels.index(" ")
        except ValueError:
            return -1

    def to_text(self) -> str:
        lines = ["# Each line is one label; the CTC blank is implicit and last."]
        lines += ["\\#" if label == "#" else label for label in self.labels]
        return "\n".join(lines) + "\n"

    def serialize(self) -> bytes:
        """Upstream's `Alphabet::Serialize` layout, read by the native client from `metadata_alphabet`:
        uint16 count, then per label uint16 index, uint16 byte length, UTF-8 bytes (little-endian)."""
        out = bytearray(struct.pack("<H", len(self.labels)))
        for index, label in enumerate(self.labels):
            raw = label.encode("utf-8")
            out += struct.pack("<HH", index, len(raw)) + raw
        return bytes(out)

    def decode(self, indices: list[int] | tuple[int, ...]) -> str:
        return "".join(self.labels[i] for i in indices)

    def encode(self, text: str) -> list[int]:
        index = {label: i for i, label in enumerate(self.labels)}
        try:
            return [index[ch] for ch in text]
        except KeyError as exc:
            raise AlphabetError(f"character {exc.args[0]!r} is not in the alphabet") from exc


ENGLISH = Alphabet(tuple(" abcdefghijklmnopqrstuvwxyz'"))
