"""What the benchmark scripts share to turn their runs into markdown tables.

Each script writes, as it goes, an index of its runs: one line per run,
tab-separated, what the run was (one or two fields, such as the scenario and
the hub) and the path of the run's JSON report. These helpers read it back,
take medians and spreads of report fields (dotted paths such as
"latency.p99_us"), and format counts and milliseconds the same way in every
table.
"""

import json
import statistics
from collections import OrderedDict


def grouped(index):
    """The reports of `index`, grouped by the first field of each line and
    then by the second, in the order the runs were made."""
    runs = OrderedDict()
    for line in open(index):
        first, second, path = line.rstrip("\n").split("\t")
        runs.setdefault(first, OrderedDict()).setdefault(second, []).append(
            json.load(open(path))
        )
    return runs


def extract(report, field):
    for key in field.split("."):
        report = report[key]
    return report


def median(reports, field):
    """The median of a field over reports, leaving out those without it
    (None); None if none has it."""
    values = [v for v in (extract(r, field) for r in reports) if v is not None]
    return statistics.median(values) if values else None


def spread(reports, field):
    """Half the range of a field over its median, as a percentage."""
    values = [extract(r, field) for r in reports]
    mid = statistics.median(values)
    return f"±{(max(values) - min(values)) / 2 / mid * 100:.0f}%" if mid else "–"


def count(n):
    return f"{round(n):,}"


def fixed(n, digits):
    return "–" if n is None else f"{n:.{digits}f}"


def ms(us):
    """Microseconds as milliseconds, to three or so significant figures."""
    ms = us / 1000
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def times(a, b):
    return f"{a / b:.2f}x" if b else "–"
