"""Compare JSON codecs on the real frames of the reference broker transcript.

Run: python benchmarks/codec.py [--seconds 0.3]

Prints, for stdlib json and each fast codec installed (orjson, msgspec), the
time to decode a line and to encode a frame, and the ratio to stdlib json.
The frames are the ones recorded from the reference broker, so the mix is what
a backend really parses; a 64 KiB message frame is added to show large lines.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import timeit
from typing import Any, Callable

TRANSCRIPT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "reference-broker-transcript.json"


def load_frames(path: pathlib.Path = TRANSCRIPT) -> list[dict[str, Any]]:
    """Every frame of the transcript, both directions, plus one 64 KiB message."""
    entries = json.loads(path.read_text())
    frames = [entry["frame"] for entry in entries if "frame" in entry]
    big = {"request_id": "big", "action": "new_message",
           "params": {"message": "x" * 65536, "context": frames[0]["params"]}}
    return frames + [big]


def codecs() -> dict[str, tuple[Callable[[bytes], Any], Callable[[Any], bytes]]]:
    """The codecs this machine has, as (decode line, encode frame) pairs."""
    found: dict[str, tuple[Callable[[bytes], Any], Callable[[Any], bytes]]] = {
        "json": (json.loads,
                 lambda obj: json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()),
    }
    try:
        import orjson
        found["orjson"] = (orjson.loads, orjson.dumps)
    except ImportError:
        pass
    try:
        import msgspec
        found["msgspec"] = (msgspec.json.decode, msgspec.json.encode)
    except ImportError:
        pass
    return found


def per_call_us(fn: Callable[[], Any], seconds: float) -> float:
    """Best-of-3 microseconds per call, each run lasting about `seconds`."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * seconds / 0.2))
    return min(timer.repeat(3, number)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3,
                        help="time per measurement (a smoke run uses 0.02)")
    args = parser.parse_args(argv)
    frames = load_frames()
    lines = [json.dumps(f, separators=(",", ":")).encode() for f in frames]
    small = lines[:-1]
    results = {}
    for name, (decode, encode) in codecs().items():
        results[name] = (
            per_call_us(lambda: [decode(line) for line in small], args.seconds) / len(small),
            per_call_us(lambda: decode(lines[-1]), args.seconds),
            per_call_us(lambda: [encode(f) for f in frames[:-1]], args.seconds) / len(small),
        )
    base = results["json"]
    print(f"{len(small)} transcript frames, plus one 64 KiB message frame; python {sys.version.split()[0]}")
    print(f"{'codec':<9}{'decode us':>11}{'x json':>8}{'64KiB dec us':>14}{'x json':>8}{'encode us':>11}{'x json':>8}")
    for name, (dec, big, enc) in results.items():
        print(f"{name:<9}{dec:>11.2f}{base[0] / dec:>8.2f}{big:>14.2f}{base[1] / big:>8.2f}"
              f"{enc:>11.2f}{base[2] / enc:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
