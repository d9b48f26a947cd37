"""`python -m data_prep ...`: the same command as `dist-llm prep ...`."""

import argparse
import sys

from data_prep.cli import add_arguments, run
from dist_llm.errors import DistLLMError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except DistLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
