"""The reference broker's recorded traffic (tests/data), grouped by scenario."""

from __future__ import annotations

import json
import pathlib
from typing import Any

PATH = pathlib.Path(__file__).resolve().parents[1] / "data" / "reference-broker-transcript.json"


def entries() -> list[dict[str, Any]]:
    return json.loads(PATH.read_text())


def scenarios() -> list[tuple[str, list[dict[str, Any]]]]:
    """(note, entries) per scenario, in recorded order."""
    result: list[tuple[str, list[dict[str, Any]]]] = []
    for entry in entries():
        if "note" in entry:
            result.append((entry["note"], []))
        else:
            result[-1][1].append(entry)
    return result


def frames(sent_by: str | None = None, action: str | None = None) -> list[dict[str, Any]]:
    """Every frame, optionally only those sent by 'broker' or 'backend', or of one action."""
    def sender(entry: dict[str, Any]) -> str:
        return "broker" if entry["dir"].startswith("broker->") else "backend"

    return [
        entry["frame"]
        for entry in entries()
        if "frame" in entry
        and (sent_by is None or sender(entry) == sent_by)
        and (action is None or entry["frame"]["action"] == action)
    ]
