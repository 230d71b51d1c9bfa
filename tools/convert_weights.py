"""Run ``cute-moe-convert`` from a source checkout: ``python tools/convert_weights.py --help``."""
import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401,E702
from cute_moe.cli.convert_weights import main  # noqa: E402
raise SystemExit(main())
