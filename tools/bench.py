"""Run ``cute-moe-bench`` from a source checkout: ``python tools/bench.py --help``."""
import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401,E702
from cute_moe.cli.bench import main  # noqa: E402
raise SystemExit(main())
