"""The `lowbit` command line. Subcommands grow with the project; today: `info` (version, ISA,
type table)."""

from __future__ import annotations

import argparse
import json
import sys

import lowbit


def _info(args: argparse.Namespace) -> int:
    types = lowbit.qtypes()
    if args.json:
        payload = {
            "version": lowbit.__version__,
            "isa": lowbit.isa(),
            "available_isas": lowbit.available_isas(),
            "qtypes": [t.__dict__ for t in types],
        }
        print(json.dumps(payload, indent=2))
        return 0
    print(f"lowbit {lowbit.__version__}  isa: {lowbit.isa()}  (available: {', '.join(lowbit.available_isas())})")
    print(f"{'qtype':<8} {'block':>5} {'bytes':>5} {'bpw':>7}  {'ggml':<4} {'gguf id':>7}")
    for t in types:
        bpw = f"{t.bits_per_weight:.4g}" + ("+" if t.group_affine else "")
        gguf = "" if t.gguf_type is None else str(t.gguf_type)
        print(f"{t.name:<8} {t.block_size:>5} {t.block_bytes:>5} {bpw:>7}  {'yes' if t.ggml else 'no':<4} {gguf:>7}")
    print("int*: + one f16 scale per group, + one zero per group when asymmetric")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lowbit` script; returns the exit code."""
    parser = argparse.ArgumentParser(prog="lowbit", description="CPU-first LLM compression toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, instruction set in use, and the type table")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except lowbit.LowbitError as e:
        print(f"lowbit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
