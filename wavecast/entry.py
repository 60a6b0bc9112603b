"""What train.py and eval.py wrap around their Hydra main: a "did you mean" for mistyped keys."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def run_with_hints(main: Callable[[], object], config_name: str) -> None:
    """Run a `@hydra.main` function; when it fails, print the did-you-mean of a mistyped
    override (after Hydra's own message) and keep its exit status."""
    try:
        main()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
            hint = None
            if overrides:
                from wavecast.config import override_hint

                try:
                    hint = override_hint(config_name, overrides, CONFIG_DIR)
                except Exception:  # noqa: BLE001 - a hint must never hide the real error
                    hint = None
            if hint:
                print(hint, file=sys.stderr)
        raise
