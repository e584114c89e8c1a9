"""Turn a finished audit's tables into a complete report directory (HTML from ``templates/``, data files, images).

The directory appears atomically: everything is written into a hidden sibling directory that is renamed into place
only when complete, so a report directory is either whole or absent.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import quote

import jinja2
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from skimage.segmentation import find_boundaries

from ._decode import Unreadable
from .datasets import FolderSource, Source
from .duplicates import COLUMNS as DUPLICATE_COLUMNS
from .duplicates import pair_counts
from .errors import AuditError
from .findings import AuditTables
from .foreground import estimate_foreground
from .heatmaps import upsample
from .sprites import SHEET_GRID, SHEET_SUFFIX, SpriteSheets, decode_sheets

#: Colormap of every heatmap image in the report.
COLORMAP = "inferno"
#: Side in pixels of the images the report shows (small images are upscaled for the eye).
DISPLAY_SIZE = 96
#: Colour of the contour of a finding's blamed region (or, for the background, of each image's object) in its
#: pictures: cyan, which the heatmaps' colormap does not use.
OUTLINE_COLOUR = (0, 255, 255)
#: Skipped inputs listed in the page; audit.json lists all of them.
MAX_SKIPPED_SHOWN = 200
#: The explorer's data, a script that assigns it to ``window.gradcamAuditData`` (a page opened from ``file://``
#: may load scripts but not fetch files).
EXPLORER_DATA = "explore-data.js"


def templates_dir() -> Path:
    """The Jinja templates: inside the installed package, or at the root of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "index.html").exists():
            return candidate
    raise RuntimeError("the report templates are missing from this installation of gradcam-audit")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pct"] = lambda x: "n/a" if x is None or not np.isfinite(x) else f"{x:.0%}"
    env.filters["num"] = lambda x, digits=2: "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"
    return env


def _heat_rgb(maps: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Upsample raw maps (N, h, w) to ``size``, scale each to [0, 1] by its maximum, and colour them.

    Returns the scaled maps (N, H, W) and the RGB images (N, H, W, 3) uint8; an all-zero map stays black.
    """
    up = np.nan_to_num(upsample(maps, size))
    peak = up.max(axis=(1, 2), keepdims=True)
    scaled = np.divide(up, peak, out=np.zeros_like(up), where=peak > 0)
    rgb = (colormaps[COLORMAP](scaled)[..., :3] * 255).astype(np.uint8)
    return scaled, rgb


def _display(image: np.ndarray) -> Image.Image:
    """A picture for the page: small images upscaled (nearest) to :data:`DISPLAY_SIZE`, large ones shrunk."""
    pil = Image.fromarray(image)
    longest = max(pil.size)
    if longest < DISPLAY_SIZE or longest > 2 * DISPLAY_SIZE:
        scale = (DISPLAY_SIZE if longest < DISPLAY_SIZE else 2 * DISPLAY_SIZE) / longest
        method = Image.Resampling.NEAREST if longest < DISPLAY_SIZE else Image.Resampling.LANCZOS
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), method)
    return pil


def _original(source: Source, sample_id: str) -> np.ndarray:
    """The original image of a sample, or a grey square if it can no longer be read (deleted since the audit)."""
    try:
        return source.load([sample_id])[0]
    except Unreadable:
        return np.full((DISPLAY_SIZE, DISPLAY_SIZE, 3), 128, dtype=np.uint8)


def _originals(source: Source, sample_ids) -> list[np.ndarray]:
    """The original images of samples, read in one call (a tfds split is one pass over its records, whatever the
    number of samples), each that can no longer be read a grey square (:func:`_original`)."""
    sample_ids = list(sample_ids)
    try:
        return source.load(sample_ids)
    except Unreadable:
        return [_original(source, sample_id) for sample_id in sample_ids]


def outlined(picture: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``picture`` (H, W, 3) uint8 with the contour of ``region`` (boolean, any size, resized to the picture's by
    nearest neighbour) drawn in :data:`OUTLINE_COLOUR`: the region's own pixels that touch its outside."""
    height, width = picture.shape[:2]
    mask = np.asarray(Image.fromarray(np.asarray(region, dtype=np.uint8) * 255).resize(
        (width, height), Image.Resampling.NEAREST)) > 127
    out = picture.copy()
    out[find_boundaries(mask, mode="inner")] = OUTLINE_COLOUR
    return out


def _object_mask(source: Source, sample_id: str, image: np.ndarray) -> np.ndarray:
    """The object mask of a sample for its picture ``image``: the source's true mask, else the estimate from the
    picture (as the audit's ``background_attention`` used)."""
    mask = _true_mask(source, sample_id)
    return estimate_foreground(image[None])[0] if mask is None else mask


def _true_mask(source: Source, sample_id: str) -> np.ndarray | None:
    try:
        return source.load_masks([sample_id])[0]
    except (Unreadable, OSError):
        return None


def _sample_cards(source: Source, tables: AuditTables, rows: pd.DataFrame, assets: Path, prefix: str, *,
                  outline: np.ndarray | str | None = None, label_cams: bool = False) -> list[dict]:
    """Write original / heatmap / overlay images of ``rows`` and return what the templates show of them.

    Overlays use the original image (shrunk for display when large), with the CAM upsampled to its size: the
    predicted class's, or with ``label_cams`` the given label's (where the tables keep them).
    ``outline``: a region (boolean (H, W) at any size) whose contour is drawn on the heatmap and the overlay, or
    ``"object"`` for each image's object mask (a finding about the background).
    """
    cams = tables.label_cams if label_cams and tables.label_cams is not None else tables.cams
    cards = []
    originals = _originals(source, rows["sample_id"])
    for i, ((position, row), original) in enumerate(zip(rows.iterrows(), originals, strict=True)):
        image = np.asarray(_display(original))
        scaled, heat = _heat_rgb(cams[position][None], image.shape[:2])
        # Blend the heatmap in proportion to its strength, so cold regions show the image unchanged.
        alpha = 0.65 * scaled[0][..., None]
        overlay = (image * (1 - alpha) + heat[0] * alpha).astype(np.uint8)
        heatmap = heat[0]
        if outline is not None:
            region = _object_mask(source, row["sample_id"], image) if isinstance(outline, str) else outline
            heatmap, overlay = outlined(heatmap, region), outlined(overlay, region)
        files = {}
        for kind, picture in (("image", image), ("heatmap", heatmap), ("overlay", overlay)):
            name = f"{prefix}-{i:03d}-{kind}.png"
            _display(picture).save(assets / name)
            files[kind] = f"assets/{name}"
        cards.append({**row.to_dict(), **files})
    return cards


#: Statistics whose per-class distributions the report plots, with their titles.
DISTRIBUTIONS = {
    "border_focus": "border focus (1 = no preference)",
    "corner_focus": "corner focus (1 = no preference)",
    "background_attention": "background attention (mass off the object)",
    "background_focus": "background focus (1 = no preference)",
    "concentration": "concentration (1 - normalised entropy)",
}
#: Flags that make a sample a finding, for the comparison with the previous run.
SAMPLE_FINDINGS = ("uses_shortcut", "label_issue")


def _distribution_plots(samples: pd.DataFrame, class_names: tuple[str, ...], assets: Path) -> list[dict]:
    """One box plot per statistic, a box per class, saved as PNG."""
    plots = []
    for column, title in DISTRIBUTIONS.items():
        groups = [samples.loc[samples["label"] == k, column].dropna().to_numpy() for k in range(len(class_names))]
        # A Figure of its own, outside any global backend or figure registry.
        fig = Figure(figsize=(6.5, 0.35 * len(class_names) + 1.2), dpi=80)
        ax = fig.subplots()
        ax.boxplot(groups, vert=False, whis=(5, 95), showfliers=False, widths=0.6)
        ax.set_yticks(range(1, len(class_names) + 1), [str(n)[:30] for n in class_names])
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        name = f"dist-{column}.png"
        fig.savefig(assets / name)
        plots.append({"file": f"assets/{name}", "title": title})
    return plots


def _strategies(tables: AuditTables, class_rows: list[dict], assets: Path) -> list[dict]:
    """Per class, its SpRAy clusters: mean heatmap picture and share of the class's images."""
    out = []
    for row in class_rows:
        found = tables.clusters.get(row["class"])
        if found is None or found.count == 0:
            continue
        _, heat = _heat_rgb(np.nan_to_num(found.mean_maps), (DISPLAY_SIZE, DISPLAY_SIZE))
        valid = max(int((found.labels >= 0).sum()), 1)
        clusters = []
        for c in range(found.count):
            name = f"class-{row['class']:03d}-cluster-{c}.png"
            _display(heat[c]).save(assets / name)
            clusters.append({"file": f"assets/{name}", "share": float((found.labels == c).sum() / valid),
                             "shortcut": bool(row["flagged"] and row["shortcut_cluster"] == c)})
        out.append({"class_name": row["class_name"], "flagged": row["flagged"], "clusters": clusters})
    return out


def _duplicate_pairs(pairs: pd.DataFrame | None, sources: dict[str, Source], assets: Path, limit: int) -> dict:
    """Counts of duplicate pairs by kind and splits, and the first ``limit`` pairs with both pictures."""
    if pairs is None or pairs.empty:
        return {"counts": [], "pairs": [], "total": 0}
    head, shown, originals = pairs.head(limit), [], {}
    for split in set(head["split_a"]) | set(head["split_b"]):  # each split's pictures read in one call
        ids = list(dict.fromkeys([*head.loc[head["split_a"] == split, "sample_id_a"],
                                  *head.loc[head["split_b"] == split, "sample_id_b"]]))
        originals[split] = dict(zip(ids, _originals(sources[split], ids), strict=True))
    for i, row in enumerate(head.itertuples(index=False)):
        pictures = {}
        for side, split, sample_id in (("a", row.split_a, row.sample_id_a), ("b", row.split_b, row.sample_id_b)):
            name = f"dup-{i:03d}-{side}.png"
            _display(originals[split][sample_id]).save(assets / name)
            pictures[side] = f"assets/{name}"
        shown.append({**row._asdict(), "image_a": pictures["a"], "image_b": pictures["b"]})
    return {"counts": pair_counts(pairs), "pairs": shown, "total": len(pairs)}


def peak_scaled_cams(cams: np.ndarray) -> np.ndarray:
    """Each CAM scaled to a peak of 255, as uint8 (an all-zero or non-finite CAM becomes all zeros).

    Overlays, class means and clustering are scale-free and need no finer steps; the statistics in the tables come
    from the full-precision maps."""
    peak = np.nanmax(cams, axis=(1, 2), keepdims=True)
    scaled = np.divide(cams, peak, out=np.zeros_like(cams), where=np.isfinite(peak) & (peak > 0))
    return np.round(255 * np.nan_to_num(scaled)).astype(np.uint8)


def _base64(array: np.ndarray) -> str:
    """The bytes of ``array`` (little-endian, as every browser's typed arrays on today's machines) in base64."""
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _explorer_column(values: pd.Series) -> dict:
    """One column of the samples table as the explorer reads it.

    ``bool``: one byte per sample; ``number``: float32 (NaN kept); ``category``: the sorted distinct strings and a
    uint16 code per sample (columns with few distinct values: names, flags); ``text``: the strings themselves and
    each one's rank in sorted order (sample ids, reasons), so that the browser sorts them as numbers."""
    name = str(values.name)
    if pd.api.types.is_bool_dtype(values):
        return {"name": name, "kind": "bool", "data": _base64(values.fillna(False).to_numpy(dtype=np.uint8))}
    if pd.api.types.is_numeric_dtype(values):
        return {"name": name, "kind": "number",
                "data": _base64(values.to_numpy(dtype=np.float32, na_value=np.nan).astype("<f4"))}
    text = values.fillna("").astype(str)
    codes, distinct = pd.factorize(text, sort=True)
    if len(distinct) <= min(np.iinfo(np.uint16).max, max(len(text) // 2, 1)):
        return {"name": name, "kind": "category", "values": distinct.tolist(),
                "data": _base64(codes.astype("<u2"))}
    rank = np.empty(len(text), dtype="<u4")
    rank[np.argsort(text.to_numpy(dtype=str), kind="stable")] = np.arange(len(text))
    return {"name": name, "kind": "text", "values": text.tolist(), "rank": _base64(rank)}


def _sprite_images(sheets: SpriteSheets, sample_ids: np.ndarray, assets: Path) -> dict:
    """Write the sprite sheets as ``assets/thumbs-NNNN.jpg`` and say where each sample's thumbnail is: cell
    ``slot % grid**2`` (row by row) of sheet ``slot // grid**2``."""
    if len(sheets.slots) != len(sample_ids):
        raise ValueError(f"{len(sheets.slots)} thumbnail slots for {len(sample_ids)} samples")
    files = []
    for number, sheet in enumerate(sheets.sheets):
        name = f"thumbs-{number:04d}{SHEET_SUFFIX}"
        (assets / name).write_bytes(sheet)
        files.append(f"assets/{name}")
    return {"kind": "sprites", "side": sheets.side, "grid": SHEET_GRID, "sheets": files,
            "slots": _base64(sheets.slots.astype("<u4"))}


def _linked_images(source: Source, sample_ids: np.ndarray, report_dir: Path) -> list[str]:
    """URLs of the samples' own files, relative to the report directory (``--link-images``)."""
    if not isinstance(source, FolderSource):
        raise AuditError("--link-images links the files of an image folder; this dataset is not one (drop the option "
                         "and the report carries its own thumbnails)")
    path_of = dict(zip(source.sample_ids, source.paths, strict=True))
    return [quote(os.fsencode(os.path.relpath(Path(path_of[sample_id]).resolve(), report_dir.resolve())))
            for sample_id in sample_ids]


def _explorer_data(source: Source, tables: AuditTables, scaled_cams: np.ndarray, assets: Path, report_dir: Path,
                   link_images: bool, sprite_sheets: SpriteSheets | None) -> dict:
    """Everything the explorer shows of every sample: each column of the samples table, whether the sample is in a
    duplicate pair, its CAM at the target layer's resolution (uint8), its thumbnail (a cell of a sprite sheet, or
    its own file) and the colormap as a 256-entry lookup table."""
    samples = tables.samples
    ids = samples["sample_id"].to_numpy(dtype=str)
    pairs = tables.duplicates
    paired = set()
    if pairs is not None:
        for side in ("a", "b"):
            paired |= set(pairs.loc[pairs[f"split_{side}"] == source.split, f"sample_id_{side}"])
    if link_images:
        images = {"kind": "files", "files": _linked_images(source, ids, report_dir)}
    else:
        images = _sprite_images(sprite_sheets or decode_sheets(source, ids), ids, assets)
    lut = (colormaps[COLORMAP](np.arange(256))[:, :3] * 255).round().astype(np.uint8)
    return {
        "classes": [str(c) for c in source.class_names],
        "columns": [_explorer_column(samples[c]) for c in samples.columns],
        "duplicate": _base64(np.isin(ids, list(paired)).astype(np.uint8)),
        "cams": {"height": int(scaled_cams.shape[1]), "width": int(scaled_cams.shape[2]),
                 "data": _base64(scaled_cams)},
        "images": images,
        "colormap": _base64(lut),
    }


def _finding_sets(samples: pd.DataFrame, classes: pd.DataFrame) -> dict[str, set[str]]:
    flags = samples["flags"].fillna("").str.split(";")
    return {
        "shortcut classes": set(classes.loc[classes["flagged"], "class_name"].astype(str)),
        "flagged samples": set(samples.loc[flags.map(lambda f: bool(set(f) & set(SAMPLE_FINDINGS))), "sample_id"]),
    }


def _history(out_dir: Path, tables: AuditTables) -> dict | None:
    """New, persisting and resolved findings against the latest earlier run of the same dataset and model."""
    meta = tables.meta
    earlier = []
    for audit_json in out_dir.parent.glob("*/audit.json"):
        try:
            previous = json.loads(audit_json.read_text())
        except (OSError, ValueError):
            continue
        same = (previous.get("dataset", {}).get("fingerprint") == meta["dataset"]["fingerprint"]
                and previous.get("dataset", {}).get("split") == meta["dataset"]["split"]
                and previous.get("model", {}).get("fingerprint") == meta["model"]["fingerprint"])
        if same and previous.get("run_id") != meta["run_id"] and (audit_json.parent / "samples.parquet").exists():
            earlier.append((previous.get("created", ""), audit_json.parent, previous))
    if not earlier:
        return None
    _, directory, previous = max(earlier, key=lambda item: item[0])
    before = _finding_sets(pd.read_parquet(directory / "samples.parquet"), pd.read_csv(directory / "classes.csv"))
    now = _finding_sets(tables.samples, tables.classes)
    rows = [{"what": what, "new": sorted(now[what] - before[what]), "persisting": sorted(now[what] & before[what]),
             "resolved": sorted(before[what] - now[what])} for what in now]
    return {"previous_run": previous["run_id"], "previous_created": previous.get("created", "?"),
            "previous_link": f"../{directory.name}/index.html", "rows": rows}


def write_report(out_dir: Path, source: Source, tables: AuditTables, *, gallery_size: int = 24,
                 other: Source | None = None, link_images: bool = False,
                 sprite_sheets: SpriteSheets | None = None) -> Path:
    """Write the complete report directory ``out_dir`` and return it; refuses to overwrite an existing one.

    ``other`` is the training split, when duplicates were searched across splits (for the pairs' pictures).
    ``link_images`` (image folders only): the explorer shows the dataset's own files, linked by paths relative to
    the report directory, instead of thumbnails in sprite sheets (a smaller report that needs the dataset beside
    it). ``sprite_sheets``: those thumbnails as the audit's shards made them, rows as in ``tables.samples``;
    without them they are made here, by decoding the dataset again."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise AuditError(f"report directory {str(out_dir)!r} already exists; choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        assets = tmp / "assets"
        assets.mkdir(parents=True)
        _write_report_files(tmp, assets, source, tables, gallery_size, _history(out_dir, tables), out_dir.name,
                            other, link_images, sprite_sheets)
        try:
            os.rename(tmp, out_dir)
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Something else created out_dir meanwhile: the finished report goes beside it rather than being lost.
            out_dir = out_dir.with_name(f"{out_dir.name}-{tables.meta.get('run_id', uuid.uuid4().hex)[:8]}")
            os.rename(tmp, out_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AuditError(f"could not write the report directory {str(out_dir)!r} ({err.strerror or err}); "
                         "nothing was written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_report_files(tmp: Path, assets: Path, source: Source, tables: AuditTables, gallery_size: int,
                        history: dict | None, report_name: str, other: Source | None, link_images: bool,
                        sprite_sheets: SpriteSheets | None) -> None:
    samples, classes = tables.samples, tables.classes
    # The parquet file keeps the precision of the computation: the statistics come from float32 heatmaps (and the
    # scores from float32 probabilities), so float32 holds all they have, at half the size. The CSV, for reading and
    # spreadsheets, has 4 significant digits.
    samples.astype({c: np.float32 for c in samples.columns if samples[c].dtype == np.float64}).to_parquet(
        tmp / "samples.parquet", index=False, compression="zstd")
    samples.to_csv(tmp / "samples.csv", index=False, float_format="%.4g")
    classes.to_csv(tmp / "classes.csv", index=False, float_format="%.6g")
    pairs = tables.duplicates if tables.duplicates is not None else pd.DataFrame(columns=DUPLICATE_COLUMNS)
    pairs.to_csv(tmp / "duplicates.csv", index=False, float_format="%.6g")
    (tmp / "audit.json").write_text(json.dumps(tables.meta, indent=2, default=str))
    scaled_cams = peak_scaled_cams(tables.cams)
    np.savez_compressed(tmp / "cams.npz", sample_id=samples["sample_id"].to_numpy(dtype=str), cam=scaled_cams)
    if tables.probs is not None:
        np.savez_compressed(tmp / "probs.npz", sample_id=samples["sample_id"].to_numpy(dtype=str), probs=tables.probs,
                            class_names=np.asarray(source.class_names, dtype=str))
    for name in ("report.css", "report.js"):
        shutil.copyfile(templates_dir() / "static" / name, assets / name)
    explorer = _explorer_data(source, tables, scaled_cams, assets, tmp, link_images, sprite_sheets)
    # ensure_ascii: the file is JavaScript, and every name from the data stays inside a JSON string literal.
    (assets / EXPLORER_DATA).write_text(f"window.gradcamAuditData = {json.dumps(explorer, ensure_ascii=True)};\n",
                                        encoding="ascii")

    _, mean_heat = _heat_rgb(np.nan_to_num(tables.class_mean_cams), (DISPLAY_SIZE, DISPLAY_SIZE))
    class_rows = []
    for k, row in classes.iterrows():
        name = f"class-{k:03d}-mean.png"
        _display(mean_heat[k]).save(assets / name)
        class_rows.append({**row.to_dict(), "mean_heatmap": f"assets/{name}"})

    findings = []
    for row in (r for r in class_rows if r["flagged"]):
        k = row["class"]
        # Its images first by the score the explorer link sorts them by (the reliance where it was measured), shown
        # with the evidence for their label that the rules judged.
        score = row["reliance_column"] if row["sample_score"] == "reliance" else row["region_column"]
        mine = samples[samples["label"] == k].nlargest(8, score)
        region = tables.regions.get(k)
        outline = region if region is not None else "object" if row["region_kind"] == "background" else None
        finding = {**row, "outlined": region is not None,
                   "strip": _sample_cards(source, tables, mine, assets, f"finding-{k:03d}", outline=outline,
                                          label_cams=True)}
        if region is not None:
            name = f"finding-{k:03d}-mean.png"
            _display(outlined(mean_heat[k], region)).save(assets / name)
            finding["mean_heatmap"] = f"assets/{name}"
        findings.append(finding)
    strategies = _strategies(tables, class_rows, assets)
    duplicates = _duplicate_pairs(tables.duplicates, {source.split: source, **({other.split: other} if other else {})},
                                  assets, gallery_size)

    valid = samples[samples["cam_valid"]]
    gallery = _sample_cards(source, tables, valid.nlargest(gallery_size, "border_focus"), assets, "border")
    relabel = samples[samples["relabel_reason"] != ""].nlargest(gallery_size, "relabel_score")
    relabel_cards = _sample_cards(source, tables, relabel, assets, "relabel")

    html = _environment().get_template("index.html").render(
        meta=tables.meta,
        classes=class_rows,
        findings=findings,
        gallery=gallery,
        relabel=relabel_cards,
        relabel_total=int((samples["relabel_reason"] != "").sum()),
        label_issues=int(samples["is_label_issue"].sum()),
        candidates=[r for r in class_rows if r["status"] == "not confirmed"],
        strategies=strategies,
        duplicates=duplicates,
        empty_cams=int((~samples["cam_valid"]).sum()),
        skipped=tables.meta.get("skipped", [])[:MAX_SKIPPED_SHOWN],
        distributions=_distribution_plots(samples, source.class_names, assets),
        history=history,
        class_names=[str(n) for n in source.class_names],
        report_name=f"reports/{report_name}",
        samples_total=len(samples),
        explorer_data=f"assets/{EXPLORER_DATA}",
    )
    (tmp / "index.html").write_text(html, encoding="utf-8")
