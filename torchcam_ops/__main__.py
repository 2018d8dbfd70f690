"""``python -m torchcam_ops <command>``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"demo": "a short demonstration of the CAM ops on a random batch"}
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in commands:
        print("usage: python -m torchcam_ops <command> [options]\n\ncommands:")
        for name, description in commands.items():
            print(f"  {name:<8}{description}")
        raise SystemExit(0 if not argv or argv[0] in {"-h", "--help"} else 2)
    from torchcam_ops import demo

    demo.main(argv[1:])


if __name__ == "__main__":
    main()
