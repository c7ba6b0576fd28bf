"""The resume state of one video job: a hidden folder beside the output holding the picture's closed segments (a few
seconds each, encoded) and a journal line per segment with its first and last timestamp and frame count.

A rerun of the same job (same input file, model, pixel options and encoding) keeps the journaled segments and
starts after the last journaled timestamp, so it is frame-exact; a segment that was being written when the run
stopped is not in the journal and is removed. A different job's state is discarded. The folder goes when the
output is written."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esrgan_cli.files import write_failure

JOURNAL = "journal.jsonl"


@dataclass(frozen=True)
class Segment:
    name: str
    first: int  # pts of its first frame, in the source stream's time base
    last: int
    frames: int
    held: int  # damaged frames held in it


class SegmentJournal:
    def __init__(self, dst: Path, key: dict[str, Any]) -> None:
        self.folder = dst.parent / f".{dst.name}.esrgan-video"
        self.key = key
        self.segments: list[Segment] = []

    def open(self) -> None:
        """Take up the state a run of the same job left, or start afresh."""
        journal = self.folder / JOURNAL
        lines: list[dict[str, Any]] = []
        try:
            with open(journal, encoding="utf-8") as f:
                for line in f:
                    try:
                        lines.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a line cut short by a crash: what follows it cannot be trusted either
        except OSError:
            lines = []
        if lines and lines[0].get("job") == self.key:
            for entry in lines[1:]:
                segment = Segment(**entry["segment"])
                if not (self.folder / segment.name).is_file():
                    break
                self.segments.append(segment)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.mkdir(exist_ok=True)
            kept = {s.name for s in self.segments} | {JOURNAL}
            for found in os.scandir(self.folder):
                if found.name not in kept:
                    os.unlink(found.path)  # a segment being written when the run stopped
            # Rewritten with what is kept, so that a torn line is never followed by good ones.
            self._append({"job": self.key}, truncate=True)
            for s in self.segments:
                self._append({"segment": s.__dict__})
        except OSError as e:
            raise write_failure(self.folder, e, "cannot keep the resume state") from None

    @property
    def resume_after(self) -> int | None:
        return self.segments[-1].last if self.segments else None

    def next_name(self, suffix: str) -> str:
        return f"segment{len(self.segments):05d}{suffix}"

    def record(self, segment: Segment) -> None:
        """Journal a closed segment, once its file is on disk."""
        fd = os.open(self.folder / segment.name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._append({"segment": segment.__dict__})
        self.segments.append(segment)

    def paths(self) -> list[Path]:
        return [self.folder / s.name for s in self.segments]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _append(self, entry: dict[str, Any], truncate: bool = False) -> None:
        with open(self.folder / JOURNAL, "w" if truncate else "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
