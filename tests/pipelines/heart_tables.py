"""Headerless clinical tables laid out as the UCI heart-disease files are (not a test module).

14 comma-separated columns, no header, '?' where a value was not recorded, floats written as
'63.0', sex 0/1, chest-pain type 1-4 and resting ECG 0-2 as codes, a 0-4 severity `num` as the
outcome, which depends on age, sex, chest pain and the exercise values so a model can learn it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

COLUMNS = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope", "ca", "thal",
           "num"]


def heart_rows(n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        age, sex, cp = int(rng.integers(29, 78)), int(rng.random() < 0.68), int(rng.choice([1, 2, 3, 4], p=[.08, .17, .28, .47]))
        thalach, oldpeak = float(rng.normal(150 - 0.8 * (age - 54), 20)), float(max(0.0, rng.normal(1.0, 1.1)))
        risk = 0.06 * (age - 54) + 1.2 * sex + 1.6 * (cp == 4) - 0.03 * (thalach - 150) + 0.7 * oldpeak - 1.4
        num = int(rng.random() < 1 / (1 + np.exp(-risk))) * int(rng.integers(1, 5))
        row = [f"{age:.1f}", f"{sex:.1f}", f"{cp:.1f}", f"{rng.normal(132, 17):.1f}", f"{rng.normal(246, 50):.1f}",
               f"{int(rng.random() < .15):.1f}", f"{int(rng.choice([0, 1, 2])):.1f}", f"{thalach:.1f}",
               f"{int(rng.random() < .3):.1f}", f"{oldpeak:.1f}", f"{int(rng.choice([1, 2, 3])):.1f}", "?", "?", str(num)]
        if rng.random() < 0.3:  # a measured value not recorded, as in the Swiss and Long Beach files
            row[int(rng.choice([3, 4, 7]))] = "?"
        rows.append(row)
    return rows


def write_heart(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(",".join(r) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path
