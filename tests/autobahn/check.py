"""Runs every Autobahn case (through kosoku) against a WebSocket echo URL and judges them.

A case passes when both its behavior and its closing behavior are OK, or INFORMATIONAL (the
cases that only record what the spec leaves open, which have no other verdict). The
compression cases 12.x and 13.x may also be UNIMPLEMENTED: the server negotiates no
permessage-deflate. Everything else (NON-STRICT, FAILED, WRONG CODE, UNCLEAN, ERROR) fails
the run. Reports go to the directory given as the second argument.

Usage: check.py ws://HOST:PORT/echo REPORT_DIR
"""

import asyncio
import sys
import time
from collections import Counter

from kosoku import FailureError, run_fuzzingclient
from kosoku._report import write_reports

PASSING = {"OK", "INFORMATIONAL"}
COMPRESSION_PREFIXES = ("12.", "13.")


def label(verdict) -> str:
    return getattr(verdict, "value", str(verdict))


def acceptable(result) -> bool:
    behavior = label(result.behavior)
    close = label(result.behavior_close)
    if result.case_id.startswith(COMPRESSION_PREFIXES) and behavior == "UNIMPLEMENTED":
        return close in PASSING | {"UNIMPLEMENTED"}
    return behavior in PASSING and close in PASSING


async def main(url: str, report_dir: str) -> int:
    started = time.monotonic()
    try:
        results = await run_fuzzingclient(url, concurrency=2)
    except FailureError as failure:
        # Raised whenever a case is not OK, UNIMPLEMENTED included; judged below.
        results = failure.results
    elapsed = time.monotonic() - started
    write_reports(results, report_dir)
    counts = Counter(label(result.behavior) for result in results)
    bad = [result for result in results if not acceptable(result)]
    for result in bad:
        print(
            f"  {result.case_id}: behavior={label(result.behavior)}"
            f" close={label(result.behavior_close)}"
        )
    summary = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
    print(f"autobahn: {len(results)} cases in {elapsed:.1f}s: {summary}; reports in {report_dir}")
    # The plain closing line the CI reads.
    print(f"autobahn: {len(results) - len(bad)} passed, {len(bad)} failed")
    if not results:
        print("autobahn: no case ran")
        return 1
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
