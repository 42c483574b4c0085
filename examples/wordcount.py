"""Word count with map_reduce over text objects in storage.

The script writes a few generated "books" to the configured storage (``storage_url``) under a prefix of
its own. ``map_reduce`` splits them into partitions of ``obj_chunk_size`` bytes, aligned to whole lines,
counts the words of each partition in its own call, and one reducer adds the counts up. The result is
checked against a single-process count, and the books are deleted at the end.

Run it as ``python examples/wordcount.py [BOOKS] [MB_PER_BOOK] [CHUNK_KB]`` (defaults: 4 books of 2 MB,
partitions of 512 KB).
"""

import random
import sys
import time
import uuid
from collections import Counter

import cloudbutton
from cloudbutton.storage import Storage, remove

books = int(sys.argv[1]) if len(sys.argv) > 1 else 4
mb_per_book = float(sys.argv[2]) if len(sys.argv) > 2 else 2
chunk_size = int(float(sys.argv[3]) * 1024) if len(sys.argv) > 3 else 512 * 1024

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "sho", "ven", "dar", "bel", "qui", "xo"]


def vocabulary(size=5000):
    """Made-up words, the same for every book."""
    rng = random.Random(0)
    return sorted({"".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(size)})


def make_book(seed, size, words):
    """Lines of 12 words, about ``size`` bytes; word frequencies fall off like in real text (Zipf)."""
    rng = random.Random(seed)
    words = rng.sample(words, len(words))  # each book its own favourite words
    weights = [1 / rank for rank in range(1, len(words) + 1)]
    lines, length = [], 0
    while length < size:
        batch = rng.choices(words, weights, k=12_000)
        lines += [" ".join(batch[i : i + 12]) + "\n" for i in range(0, len(batch), 12)]
        length += sum(map(len, batch)) + len(batch)
    text = "".join(lines)
    return text[: text.rfind("\n", 0, size) + 1].encode()  # whole lines, at most size bytes


def count_words(obj):
    return Counter(obj.data_stream.read().decode().split())


def merge(results):
    total = Counter()
    for counts in results:
        total.update(counts)
    return total


storage = Storage()
prefix = f"cloudbutton-example-wordcount-{uuid.uuid4().hex[:8]}/"
try:
    words = vocabulary()
    texts = [make_book(seed, int(mb_per_book * 1e6), words) for seed in range(books)]
    for n, text in enumerate(texts):
        storage.put_object(f"{prefix}book-{n:02d}.txt", text)

    start = time.perf_counter()
    with cloudbutton.FunctionExecutor() as fexec:
        futures = fexec.map_reduce(count_words, prefix, merge, obj_chunk_size=chunk_size)
        counts = fexec.get_result(futures)[0]
        calls = len(fexec.futures) - len(futures)
        backend, workers = fexec.config.backend, fexec.backend.workers
    elapsed = time.perf_counter() - start

    expected = Counter()
    for text in texts:
        expected.update(text.decode().split())
finally:
    if storage.list_keys(prefix):
        remove(storage.object_url(prefix), recursive=True)

megabytes = sum(map(len, texts)) / 1e6
print("the 10 most common words:")
for word, n in counts.most_common(10):
    print(f"  {word:<14} {n:>10,}")
print(f"{sum(counts.values()):,} words ({len(counts):,} distinct) in {books} objects ({megabytes:.1f} MB), "
      f"{calls} partitions of {chunk_size // 1024} KB on backend {backend!r} ({workers} workers): {elapsed:.2f} s")
if counts != expected:
    sys.exit("error: the counts differ from a single-process count")
print("the counts match a single-process count")
