"""The README's first command: run the main job end to end on the embedded default.

Until training lands this builds the config and the registry and says what ran.
"""
from __future__ import annotations

from xraygpt.common.cli import setup_logging


def main() -> int:
    setup_logging()
    import xraygpt
    from xraygpt.common.registry import KINDS, registry

    print(f"xraygpt {xraygpt.__version__}: registry loaded")
    for kind in KINDS:
        print(f"  {kind:22s} {', '.join(registry.names(kind)) or '(none yet)'}")
    print("training on the phantom dataset is not implemented yet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
