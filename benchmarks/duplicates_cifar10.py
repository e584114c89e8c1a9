"""Near duplicates on real CIFAR-10 against ciFAIR's hand-checked list of test images with a training twin.

    python benchmarks/duplicates_cifar10.py [--sheet duplicates_sheet.png] [--repeats 1]

Decodes the CIFAR-10 test and training splits from the image folder (as an audit of the test split does), runs the
audit's duplicate search (``pipeline.duplicates.find_duplicates``, default thresholds) within the test split and
between test and train, and prints: the recall of the shared half of ciFAIR's list (``cifar10_truth/``; the rest of
their list is kept elsewhere, so this estimates recall on it), how many pairs were reported (listed or not), how many
pairs join two different classes (a cross-class pair is either a label error or a false match), and the seconds the
search took (median of ``--repeats``). It writes a contact sheet (PNG): the 50 highest-ranked reported test/train
pairs that are not in the list (left: test, right: train), then every listed pair that was missed, to look at. The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipeline import samples
from pipeline.config import Thresholds
from pipeline.datasets import SourceSpec, open_source
from pipeline.duplicates import find_duplicates

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def contact_sheet(rows: list[tuple[str, np.ndarray, np.ndarray]], path: Path, per_line: int = 10) -> None:
    """Pairs side by side, ``per_line`` to a line, each under a caption, upscaled 2x."""
    cell_w, cell_h = 2 * 64 + 8, 64 + 14
    lines = max(1, -(-len(rows) // per_line))
    sheet = Image.new("RGB", (per_line * cell_w, lines * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (caption, a, b) in enumerate(rows):
        x, y = (n % per_line) * cell_w, (n // per_line) * cell_h
        for k, image in enumerate((a, b)):
            sheet.paste(Image.fromarray(image).resize((64, 64), Image.Resampling.NEAREST), (x + 64 * k, y + 12))
        draw.text((x, y), caption, fill="black")
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "cifar10")
    parser.add_argument("--truth", type=Path, default=SHARED / "cifar10_truth" / "ciFAIR_test_train_duplicates.csv")
    parser.add_argument("--sheet", type=Path, default=Path("duplicates_sheet.png"))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    tick = time.perf_counter()
    test = open_source(SourceSpec(kind="folder", name=str(args.data), split="test"))
    train = open_source(SourceSpec(kind="folder", name=str(args.data), split="train"))
    test_ids, test_digests, test_thumbs = samples.appearance(test, (32, 32), 512)
    train_ids, train_digests, train_thumbs = samples.appearance(train, (32, 32), 512)
    decode_s = time.perf_counter() - tick
    thresholds = Thresholds()
    options = {"min_correlation": thresholds.min_duplicate_correlation,
               "min_colour_correlation": thresholds.min_colour_correlation}
    times = []
    for _ in range(args.repeats):
        tick = time.perf_counter()
        within = find_duplicates(test_ids, "test", test_thumbs, test_digests, **options)
        across = find_duplicates(test_ids, "test", test_thumbs, test_digests, ids_b=train_ids, split_b="train",
                                 thumbnails_b=train_thumbs, digests_b=train_digests, **options)
        times.append(time.perf_counter() - tick)

    listed = pd.read_csv(args.truth)
    found = set(zip(across["sample_id_a"], across["sample_id_b"], strict=True))
    hit = np.array([pair in found for pair in zip(listed["test_file"], listed["train_file"], strict=True)])
    # A test image counts as found when it is paired with its listed training image.
    recall = float(hit.mean())
    listed_pairs = set(zip(listed["test_file"], listed["train_file"], strict=True))
    unlisted = across[[pair not in listed_pairs for pair in zip(across["sample_id_a"], across["sample_id_b"],
                                                                strict=True)]]
    classes = lambda frame, side: frame[f"sample_id_{side}"].str.split("/").str[1]  # noqa: E731
    cross = sum(int((classes(frame, "a") != classes(frame, "b")).sum()) for frame in (across, within))

    test_index = {sid: i for i, sid in enumerate(test_ids)}
    train_index = {sid: i for i, sid in enumerate(train_ids)}
    rows = [(f"{r.similarity:.3f} {r.sample_id_a.split('/')[1][:5]}", test_thumbs[test_index[r.sample_id_a]],
             train_thumbs[train_index[r.sample_id_b]]) for r in unlisted.head(50).itertuples()]
    missed = listed[~hit]
    rows += [(f"MISSED {t.split('/')[1][:5]}", test_thumbs[test_index[t]], train_thumbs[train_index[r]])
             for t, r in zip(missed["test_file"], missed["train_file"], strict=True)]
    contact_sheet(rows, args.sheet)

    search_s = statistics.median(times)
    print(f"decoded {len(test_ids):,} test and {len(train_ids):,} training images in {decode_s:.1f} s")
    print(f"duplicate search (within test, and test against train): {search_s:.1f} s (median of {args.repeats})")
    print(f"ciFAIR pairs found: {int(hit.sum())} of {len(listed)} (recall {recall:.3f})")
    print(f"pairs reported: test/train {len(across)} ({len(across) - int(hit.sum())} not in the shared list), "
          f"within test {len(within)}; pairs joining two classes: {cross}")
    print(f"contact sheet: {args.sheet} (the 50 highest unlisted test/train pairs, then the {len(missed)} missed "
          "listed pairs)")
    print(json.dumps({"recall": round(recall, 4), "found": int(hit.sum()), "listed": len(listed),
                      "pairs_test_train": len(across), "pairs_within_test": len(within), "cross_class_pairs": cross,
                      "search_s": round(search_s, 2), "decode_s": round(decode_s, 2),
                      "exact_pairs": int((across["kind"] == "exact").sum() + (within["kind"] == "exact").sum())}))


if __name__ == "__main__":
    main()
