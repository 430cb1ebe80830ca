"""What every check in this directory shares: failures recorded (and printed) as they happen, so
that one run reports every broken expectation, and the one way a check ends."""

import sys

FAILURES = []


def check(ok, message):
    """Records a failure (and prints it at once); returns whether the check held."""
    if not ok:
        FAILURES.append(message)
        print(f"FAIL: {message}", flush=True)
    return ok


def finish(passed, failed="check(s) failed"):
    """Ends the check: every failure listed and exit status 1, or `passed` printed."""
    if FAILURES:
        print(f"\n{len(FAILURES)} {failed}:")
        for f in FAILURES:
            print(f"  - {f}")
        sys.exit(1)
    print(passed)
