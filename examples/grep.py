"""Log analytics over partitions of a log file in storage: ERROR lines by service, and a regex.

The script writes a generated web-service log to the configured storage under a prefix of its own.
Two ``map_reduce`` jobs read it in partitions of 256 KB, aligned to whole lines: one counts the ERROR
lines of each service, the other counts the matches of a regular expression (its first group, if it
has one, else the whole match). Both are checked against a scan of the whole log here, and the log is
deleted at the end.

Run it as ``python examples/grep.py [REGEX] [LINES]`` (defaults: ``status=(5\\d\\d)``, the server errors
by status code, over 50,000 lines).
"""

import random
import re
import sys
import time
import uuid
from collections import Counter

import cloudbutton
from cloudbutton.storage import Storage, remove

pattern = sys.argv[1] if len(sys.argv) > 1 else r"status=(5\d\d)"
n_lines = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
CHUNK_SIZE = 256 * 1024

SERVICES = ["auth", "api", "billing", "search", "storage", "frontend"]
PATHS = ["/api/login", "/api/orders", "/api/search", "/api/cart", "/static/app.js", "/health"]
FAILURES = ["upstream timeout after {} ms", "connection reset by peer", "database deadlock detected",
            "out of memory in worker {}"]


def make_log(seed, lines):
    """``lines`` lines: timestamp, level, service, request fields and a message."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        level = rng.choices(["INFO", "WARN", "ERROR", "DEBUG"], [80, 12, 5, 3])[0]
        service = rng.choices(SERVICES, [5, 9, 2, 4, 3, 7])[0]
        if level == "ERROR":
            status, message = rng.choice([500, 502, 503, 504]), rng.choice(FAILURES).format(rng.randint(1, 9999))
        else:
            status, message = rng.choice([200, 200, 200, 201, 204, 301, 404]), "ok"
        out.append(f"2026-11-24T{i // 3_600_000 % 24:02d}:{i // 60_000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z "
                   f"{level:<5} {service} request_id={rng.getrandbits(48):012x} status={status} "
                   f"latency_ms={rng.randint(1, 3000)} path={rng.choice(PATHS)} {message}\n")
    return "".join(out).encode()


def errors_by_service(obj):
    counts = Counter()
    for line in obj.data_stream.read().decode().splitlines():
        fields = line.split(maxsplit=3)
        if len(fields) > 2 and fields[1] == "ERROR":
            counts[fields[2]] += 1
    return counts


def matches(obj, pattern):
    """The matches of ``pattern`` in this partition's lines: its first group, or the whole match."""
    regex = re.compile(pattern)
    counts = Counter()
    for line in obj.data_stream.read().decode().splitlines():
        if m := regex.search(line):
            counts[m.group(1) if regex.groups else m.group(0)] += 1
    return counts


def merge(results):
    total = Counter()
    for counts in results:
        total.update(counts)
    return total


try:
    re.compile(pattern)
except re.error as e:
    sys.exit(f"error: bad regular expression {pattern!r}: {e}")

storage = Storage()
prefix = f"cloudbutton-example-grep-{uuid.uuid4().hex[:8]}/"
try:
    log = make_log(0, n_lines)
    storage.put_object(f"{prefix}service.log", log)

    start = time.perf_counter()
    with cloudbutton.FunctionExecutor() as fexec:
        errors_f = fexec.map_reduce(errors_by_service, prefix, merge, obj_chunk_size=CHUNK_SIZE)
        found_f = fexec.map_reduce(matches, prefix, merge, extra_args={"pattern": pattern}, obj_chunk_size=CHUNK_SIZE)
        errors, found = fexec.get_result(errors_f + found_f)
        partitions = (len(fexec.futures) - 2) // 2  # each job: one call per partition and a reducer
        backend, workers = fexec.config.backend, fexec.backend.workers
    elapsed = time.perf_counter() - start
finally:
    if storage.list_keys(prefix):
        remove(storage.object_url(prefix), recursive=True)

print("ERROR lines by service:")
for service, n in errors.most_common():
    print(f"  {service:<10} {n:>7,}")
print(f"matches of /{pattern}/: {sum(found.values()):,} in all, {len(found):,} distinct; the most common:")
for match, n in found.most_common(5):
    print(f"  {match:<20} {n:>7,}")
print(f"{n_lines:,} lines ({len(log) / 1e6:.1f} MB) in {partitions} partitions of {CHUNK_SIZE // 1024} KB, "
      f"2 map_reduce jobs on backend {backend!r} ({workers} workers): {elapsed:.2f} s")

# the same counts from a scan of the whole log here
regex = re.compile(pattern)
local_errors, local_found = Counter(), Counter()
for line in log.decode().splitlines():
    fields = line.split(maxsplit=3)
    if fields[1] == "ERROR":
        local_errors[fields[2]] += 1
    if m := regex.search(line):
        local_found[m.group(1) if regex.groups else m.group(0)] += 1
if errors != local_errors or found != local_found:
    sys.exit("error: the counts differ from a scan of the whole log")
print("the counts match a scan of the whole log")
