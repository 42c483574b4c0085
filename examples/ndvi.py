"""Vegetation index (NDVI) of satellite image tiles stored as objects, one call per tile.

The script writes synthetic multispectral tiles (4 bands: blue, green, red, near-infrared, as uint16
reflectance like Sentinel-2 products) to the configured storage as ``.npy`` objects, under a prefix of
its own. Each call loads one tile and computes NDVI = (NIR - Red) / (NIR + Red) for every pixel, leaving
out no-data pixels (NIR + Red = 0), and returns the tile's statistics; one reducer turns them into a
summary. Everything is checked against a local computation over all tiles, and the tiles are deleted
at the end.

Run it as ``python examples/ndvi.py [TILES] [TILE_SIZE]`` (defaults: 16 tiles of 256 x 256 pixels).
"""

import io
import sys
import time
import uuid

import numpy as np

import cloudbutton
from cloudbutton.storage import Storage, remove

tiles = int(sys.argv[1]) if len(sys.argv) > 1 else 16
size = int(sys.argv[2]) if len(sys.argv) > 2 else 256
RED, NIR = 2, 3  # band order: blue, green, red, near-infrared
VEGETATED = 0.4  # NDVI above this: dense, healthy vegetation


def make_tile(seed, size):
    """Four bands of a scene with fields and forest (high NIR), bare soil, water (NIR below red) and,
    on some tiles, a no-data strip where the satellite's swath ends (all bands 0)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    vegetation = np.zeros((size, size))
    for _ in range(rng.integers(1, 6)):
        cy, cx, r = rng.random(), rng.random(), rng.uniform(0.1, 0.4)
        vegetation = np.maximum(vegetation, np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / r**2))
    water = (y - rng.random()) ** 2 + (x - rng.random()) ** 2 < rng.uniform(0, 0.03)
    noise = rng.normal(0, 100, (4, size, size))
    blue = 800 + 400 * (1 - vegetation)
    green = 1000 + 300 * vegetation
    red = 2500 - 2000 * vegetation
    nir = 2800 + 3000 * vegetation
    bands = np.stack([blue, green, red, nir]) + noise
    bands[:, water] = np.array([[600], [700], [500], [200]]) + noise[:, water] / 4
    if seed % 4 == 3:
        bands[:, :, -size // 8 :] = 0
    return np.clip(bands, 0, 10000).astype(np.uint16)


def tile_stats(obj):
    """NDVI statistics of one tile (an ``.npy`` object)."""
    bands = np.load(io.BytesIO(obj.data_stream.read()))
    red, nir = bands[RED].astype(np.float64), bands[NIR].astype(np.float64)
    total = nir + red
    valid = total > 0
    ndvi = np.divide(nir - red, total, out=np.zeros_like(total), where=valid)[valid]
    return {
        "tile": obj.key.rsplit("/", 1)[1],
        "pixels": int(ndvi.size),
        "sum": float(ndvi.sum()),
        "mean": float(ndvi.mean()) if ndvi.size else float("nan"),
        "min": float(ndvi.min()) if ndvi.size else float("nan"),
        "max": float(ndvi.max()) if ndvi.size else float("nan"),
        "vegetated": float((ndvi > VEGETATED).mean()) if ndvi.size else 0.0,
    }


def summarize(results):
    pixels = sum(r["pixels"] for r in results)
    return {
        "tiles": results,
        "pixels": pixels,
        "mean": sum(r["sum"] for r in results) / pixels,
        "min": min(r["min"] for r in results if r["pixels"]),
        "max": max(r["max"] for r in results if r["pixels"]),
        "vegetated": sum(r["vegetated"] * r["pixels"] for r in results) / pixels,
        "greenest": max((r for r in results if r["pixels"]), key=lambda r: r["mean"])["tile"],
    }


storage = Storage()
prefix = f"cloudbutton-example-ndvi-{uuid.uuid4().hex[:8]}/"
try:
    rasters = [make_tile(seed, size) for seed in range(tiles)]
    for n, bands in enumerate(rasters):
        buffer = io.BytesIO()
        np.save(buffer, bands)
        storage.put_object(f"{prefix}tile-{n:03d}.npy", buffer.getvalue())

    start = time.perf_counter()
    with cloudbutton.FunctionExecutor() as fexec:
        summary = fexec.get_result(fexec.map_reduce(tile_stats, prefix, summarize, obj_newline=None))[0]
        backend, workers = fexec.config.backend, fexec.backend.workers
    elapsed = time.perf_counter() - start
finally:
    if storage.list_keys(prefix):
        remove(storage.object_url(prefix), recursive=True)

print(f"{'tile':<14} {'mean':>7} {'min':>7} {'max':>7} {'vegetated':>10}")
for r in summary["tiles"]:
    print(f"{r['tile']:<14} {r['mean']:>7.3f} {r['min']:>7.3f} {r['max']:>7.3f} {r['vegetated']:>10.1%}")
print(f"all tiles: mean NDVI {summary['mean']:.4f}, min {summary['min']:.4f}, max {summary['max']:.4f}, "
      f"{summary['vegetated']:.1%} vegetated, greenest {summary['greenest']}")
print(f"{tiles} tiles of 4 x {size} x {size} ({summary['pixels']:,} valid pixels) in {tiles} calls "
      f"on backend {backend!r} ({workers} workers): {elapsed:.2f} s")

# the same numbers, computed here over all tiles at once
stack = np.stack(rasters).astype(np.float64)
red, nir = stack[:, RED], stack[:, NIR]
valid = (nir + red) > 0
with np.errstate(invalid="ignore"):
    ndvi = np.where(valid, (nir - red) / (nir + red), np.nan)
local_means = np.nanmean(ndvi.reshape(tiles, -1), axis=1)
checks = [
    summary["pixels"] == valid.sum(),
    np.isclose(summary["mean"], np.nanmean(ndvi)),
    np.isclose(summary["min"], np.nanmin(ndvi)),
    np.isclose(summary["max"], np.nanmax(ndvi)),
    np.isclose(summary["vegetated"], (ndvi > VEGETATED).sum() / valid.sum()),
    np.allclose([r["mean"] for r in summary["tiles"]], local_means),
]
if not all(checks):
    sys.exit(f"error: the summary differs from a local computation (checks: {checks})")
print("the summary matches a local computation")
