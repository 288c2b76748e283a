"""The quality benchmark's transfer tasks, built from data that ships inside packages.

Each task is a source domain, a shifted target domain and how many labelled target rows a
seed draws (the rest of the target is the test set). Every builder returns a `Task`, or a
string saying why it cannot run here (an optional package missing).

The split into a tuning half and a held-out half is fixed by `split_of` below and never
changes with results: the seven tasks that shaped `auto` before issue 18 are tuning tasks;
the others are ordered by the sha256 of their name and the first four join the tuning half,
the rest are held out. Decisions about `auto` are made on the tuning half only.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class Task:
    name: str
    source: pd.DataFrame
    target: pd.DataFrame
    features: list[str]
    label: str
    kind: str  # classification | regression
    shift: str  # covariate, label, new classes, instrument, subpopulation, small-n regression
    train_per_class: int = 0  # few-shot draw for classification
    train_rows: int = 0  # draw for regression
    note: str = ""


Builder = Callable[[], "Task | str"]


def _split_on(frame: pd.DataFrame, mask: "pd.Series[Any]") -> tuple[pd.DataFrame, pd.DataFrame]:
    return frame[mask].reset_index(drop=True), frame[~mask].reset_index(drop=True)


def _halves(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    half = len(frame) // 2
    first = frame.iloc[order[:half]].reset_index(drop=True)
    second = frame.iloc[order[half:]].reset_index(drop=True).copy()
    return first, second


def _recalibrate(
    frame: pd.DataFrame, columns: list[str], seed: int, low: float, high: float
) -> None:
    """Another instrument: every column scaled by a factor in [low, high] and offset."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(low, high, size=len(columns))
    offset = rng.normal(0.0, 0.5, size=len(columns)) * frame[columns].std().to_numpy()
    frame[columns] = frame[columns].to_numpy(dtype=np.float64) * scale + offset


def _columns(frame: pd.DataFrame, label: str) -> list[str]:
    return [c for c in frame.columns if c != label]


# scikit-learn's data.


def _digits() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    frame: pd.DataFrame = load_digits(as_frame=True).frame
    return frame


def digits_new_classes() -> Task:
    frame = _digits()
    source, target = _split_on(frame, frame.target < 5)
    return Task(
        "digits 0-4 → 5-9",
        source,
        target,
        _columns(frame, "target"),
        "target",
        "classification",
        "new classes",
        train_per_class=5,
        note="new classes: the head is replaced",
    )


def digits_pixel_shift() -> Task:
    frame = _digits()
    pixels = _columns(frame, "target")
    source, target = _halves(frame, 0)
    # A different scanner: weaker contrast, a brighter background, the image one pixel right.
    images = target[pixels].to_numpy(dtype=np.float64).reshape(-1, 8, 8)
    images = np.roll(images, 1, axis=2)
    images[:, :, 0] = 0.0
    target[pixels] = (0.5 * images + 4.0).reshape(-1, 64)
    return Task(
        "digits pixel shift",
        source,
        target,
        pixels,
        "target",
        "classification",
        "instrument",
        train_per_class=3,
        note="contrast 0.5x, +4 background, 1-pixel shift",
    )


def digits_noisy_scanner() -> Task:
    frame = _digits()
    pixels = _columns(frame, "target")
    source, target = _halves(frame, 3)
    rng = np.random.default_rng(4)
    noisy = target[pixels].to_numpy(dtype=np.float64) + rng.normal(0, 3.0, (len(target), 64))
    target[pixels] = np.clip(noisy, 0, 16) * 1.5
    return Task(
        "digits noisy scanner",
        source,
        target,
        pixels,
        "target",
        "classification",
        "instrument",
        train_per_class=3,
        note="pixel noise (sd 3), clipped, gain 1.5x",
    )


def digits_even_to_odd() -> Task:
    frame = _digits()
    source, target = _split_on(frame, frame.target % 2 == 0)
    return Task(
        "digits even → odd",
        source,
        target,
        _columns(frame, "target"),
        "target",
        "classification",
        "new classes",
        train_per_class=4,
        note="new classes: the odd digits",
    )


def digits_label_shift() -> Task:
    frame = _digits()
    rng = np.random.default_rng(5)
    # The source holds few 7s, 8s and 9s; the target is mostly those classes.
    rare = frame.target >= 7
    keep = ~rare | (rng.random(len(frame)) < 0.08)
    pool = frame[keep]
    source, rest = _halves(pool, 6)
    target = pd.concat([rest[rest.target < 7].iloc[:60], frame[rare & ~keep]])
    return Task(
        "digits label shift",
        source,
        target.reset_index(drop=True),
        _columns(frame, "target"),
        "target",
        "classification",
        "label",
        train_per_class=3,
        note="7-9 rare in the source, the majority in the target",
    )


def wine_lab() -> Task:
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    columns = _columns(frame, "target")
    order = np.random.default_rng(1).permutation(len(frame))
    source = frame.iloc[order[:100]].reset_index(drop=True)
    target = frame.iloc[order[100:]].reset_index(drop=True).copy()
    _recalibrate(target, columns, 2, 0.7, 1.4)
    return Task(
        "wine miscalibrated lab",
        source,
        target,
        columns,
        "target",
        "classification",
        "instrument",
        train_per_class=4,
        note="every feature scaled 0.7-1.4x and offset",
    )


def wine_label_shift() -> Task:
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    rng = np.random.default_rng(7)
    in_source = np.where(
        frame.target == 2, rng.random(len(frame)) < 0.15, rng.random(len(frame)) < 0.7
    )
    source, target = _split_on(frame, pd.Series(in_source))
    return Task(
        "wine label shift",
        source,
        target,
        _columns(frame, "target"),
        "target",
        "classification",
        "label",
        train_per_class=3,
        note="class 2 rare in the source, the largest class in the target",
    )


def wine_alcohol() -> Task:
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    source, target = _split_on(frame, frame.alcohol < frame.alcohol.median())
    return Task(
        "wine alcohol shift",
        source,
        target,
        _columns(frame, "target"),
        "target",
        "classification",
        "covariate",
        train_per_class=4,
        note="source below the median alcohol, target above",
    )


def _breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    frame: pd.DataFrame = load_breast_cancer(as_frame=True).frame
    return frame


def cancer_instrument() -> Task:
    frame = _breast_cancer()
    columns = _columns(frame, "target")
    source, target = _halves(frame, 8)
    _recalibrate(target, columns, 9, 0.5, 2.0)
    return Task(
        "breast cancer new instrument",
        source,
        target,
        columns,
        "target",
        "classification",
        "instrument",
        train_per_class=6,
        note="every measurement scaled 0.5-2x and offset",
    )


def cancer_texture() -> Task:
    frame = _breast_cancer()
    source, target = _split_on(frame, frame["mean texture"] < frame["mean texture"].median())
    return Task(
        "breast cancer texture shift",
        source,
        target,
        _columns(frame, "target"),
        "target",
        "classification",
        "covariate",
        train_per_class=5,
        note="source below the median texture, target above",
    )


def cancer_imbalanced() -> Task:
    frame = _breast_cancer()
    source, rest = _halves(frame, 10)
    # The target keeps every benign case (label 1) and a fifth of the malignant ones.
    rng = np.random.default_rng(11)
    keep = (rest.target == 1) | (rng.random(len(rest)) < 0.2)
    return Task(
        "breast cancer imbalanced target",
        source,
        rest[keep].reset_index(drop=True),
        _columns(frame, "target"),
        "target",
        "classification",
        "label",
        train_per_class=8,
        note="the target has about 12% malignant cases against 37% in the source",
    )


def _diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    frame: pd.DataFrame = load_diabetes(as_frame=True).frame
    return frame


def diabetes_age() -> Task:
    frame = _diabetes()
    source, target = _split_on(frame, frame.age < frame.age.median())
    return Task(
        "diabetes age shift (R²)",
        source,
        target,
        _columns(frame, "target"),
        "target",
        "regression",
        "covariate",
        train_rows=40,
        note="regression; source younger than the median, target older",
    )


def diabetes_sex() -> Task:
    frame = _diabetes()
    source, target = _split_on(frame, frame.sex > 0)
    return Task(
        "diabetes sex, 20 rows (R²)",
        source,
        target,
        _columns(frame, "target"),
        "target",
        "regression",
        "small-n regression",
        train_rows=20,
        note="regression on the other sex from 20 labelled rows",
    )


def diabetes_bmi_lab() -> Task:
    frame = _diabetes()
    columns = _columns(frame, "target")
    source, target = _split_on(frame, frame.bmi < frame.bmi.quantile(0.6))
    # The target's blood serum panel comes from another lab.
    _recalibrate(target, [f"s{i}" for i in range(1, 7)], 12, 0.6, 1.6)
    return Task(
        "diabetes heavier + other lab (R²)",
        source,
        target,
        columns,
        "target",
        "regression",
        "small-n regression",
        train_rows=25,
        note="target: the heaviest 40%, serum measured by another lab; 25 rows",
    )


def iris_design() -> Task:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    return Task(
        "iris design split",
        frame.iloc[:100].reset_index(drop=True),
        frame.iloc[100:].reset_index(drop=True),
        _columns(frame, "target"),
        "target",
        "classification",
        "label",
        train_per_class=10,
        note="the design's split: rows 0-99 (setosa, versicolor) -> 100-149 (all virginica)",
    )


def iris_millimetres() -> Task:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    columns = _columns(frame, "target")
    source, target = _halves(frame, 13)
    # The target measures in millimetres with a ruler that starts 3 mm in.
    target[columns] = target[columns].to_numpy() * 10.0 + 3.0
    return Task(
        "iris in millimetres",
        source,
        target,
        columns,
        "target",
        "classification",
        "instrument",
        train_per_class=4,
        note="target features x10 + 3 (mm, offset ruler)",
    )


# Optional packages (the bench extra).


def penguins_body_size() -> Task | str:
    try:
        from palmerpenguins import load_penguins
    except ImportError:
        return "palmerpenguins is not installed (pip install -e '.[bench]')"
    frame = load_penguins().dropna().reset_index(drop=True)
    median = frame["body_mass_g"].median()
    features = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "island"]
    source, target = _split_on(frame, frame.body_mass_g < median)
    return Task(
        "penguins body size",
        source,
        target,
        features,
        "species",
        "classification",
        "covariate",
        train_per_class=4,
        note="species; source lighter than the median, target heavier",
    )


def penguins_sex_by_species() -> Task | str:
    try:
        from palmerpenguins import load_penguins
    except ImportError:
        return "palmerpenguins is not installed (pip install -e '.[bench]')"
    frame = load_penguins().dropna().reset_index(drop=True)
    features = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    source, target = _split_on(frame, frame.species != "Gentoo")
    return Task(
        "penguins sex, Gentoo",
        source,
        target,
        features,
        "sex",
        "classification",
        "subpopulation",
        train_per_class=5,
        note="sex from measurements; Adelie and Chinstrap -> Gentoo",
    )


def affairs_marriage_length() -> Task | str:
    try:
        import statsmodels.api as sm
    except ImportError:
        return "statsmodels is not installed (pip install -e '.[bench]')"
    frame = sm.datasets.fair.load_pandas().data.copy()
    frame["had_affair"] = np.where(frame.pop("affairs") > 0, "yes", "no")
    young = frame[frame.yrs_married < 6].sample(n=1000, random_state=0)
    return Task(
        "affairs marriage length",
        young.reset_index(drop=True),
        frame[frame.yrs_married >= 13].reset_index(drop=True),
        _columns(frame, "had_affair"),
        "had_affair",
        "classification",
        "subpopulation",
        train_per_class=15,
        note="statsmodels' Fair data; marriages under 6 years -> 13 years and more",
    )


def anes_education() -> Task | str:
    try:
        import statsmodels.api as sm
    except ImportError:
        return "statsmodels is not installed (pip install -e '.[bench]')"
    frame = sm.datasets.anes96.load_pandas().data.copy()
    frame["vote"] = np.where(frame["vote"] > 0, "dole", "clinton")
    source, target = _split_on(frame, frame.educ <= 4)
    return Task(
        "anes96 vote by education",
        source,
        target,
        _columns(frame, "vote"),
        "vote",
        "classification",
        "subpopulation",
        train_per_class=10,
        note="1996 vote; no college degree -> degree holders",
    )


def star98_poverty() -> Task | str:
    try:
        import statsmodels.api as sm
    except ImportError:
        return "statsmodels is not installed (pip install -e '.[bench]')"
    frame = sm.datasets.star98.load_pandas().data.copy()
    above, below = frame.pop("NABOVE"), frame.pop("NBELOW")
    frame["share_above"] = above / (above + below)
    features = [
        "LOWINC",
        "PERASIAN",
        "PERBLACK",
        "PERHISP",
        "PERMINTE",
        "AVYRSEXP",
        "AVSALK",
        "PERSPENK",
        "PTRATIO",
        "PCTAF",
        "PCTCHRT",
        "PCTYRRND",
    ]
    source, target = _split_on(frame, frame.LOWINC.median() > frame.LOWINC)
    return Task(
        "star98 poorer districts (R²)",
        source,
        target,
        features,
        "share_above",
        "regression",
        "small-n regression",
        train_rows=20,
        note="share of pupils above the national median; richer -> poorer districts, 20 rows",
    )


def cars_origin() -> Task | str:
    try:
        from vega_datasets import data
    except ImportError:
        return "vega_datasets is not installed (pip install -e '.[bench]')"
    frame = data.cars().dropna().reset_index(drop=True)
    features = ["Cylinders", "Displacement", "Horsepower", "Weight_in_lbs", "Acceleration"]
    frame = frame[[*features, "Origin", "Miles_per_Gallon"]]
    source, target = _split_on(frame, frame.Origin == "USA")
    return Task(
        "cars USA → Europe/Japan (R²)",
        source,
        target,
        features,
        "Miles_per_Gallon",
        "regression",
        "subpopulation",
        train_rows=30,
        note="fuel economy; American cars -> European and Japanese ones, 30 rows",
    )


LEGACY: tuple[Builder, ...] = (
    digits_new_classes,
    digits_pixel_shift,
    wine_lab,
    penguins_body_size,
    diabetes_age,
    affairs_marriage_length,
    iris_design,
)
NEW: tuple[Builder, ...] = (
    digits_noisy_scanner,
    digits_even_to_odd,
    digits_label_shift,
    wine_label_shift,
    wine_alcohol,
    cancer_instrument,
    cancer_texture,
    cancer_imbalanced,
    diabetes_sex,
    diabetes_bmi_lab,
    iris_millimetres,
    penguins_sex_by_species,
    anes_education,
    star98_poverty,
    cars_origin,
)
TUNING_FROM_NEW = 4


def split_of(builder: Builder) -> str:
    """'tuning' or 'held-out', by the fixed rule in this module's docstring."""
    if builder in LEGACY:
        return "tuning"
    ranked = sorted(NEW, key=lambda b: hashlib.sha256(b.__name__.encode()).hexdigest())
    return "tuning" if ranked.index(builder) < TUNING_FROM_NEW else "held-out"


BUILDERS: tuple[Builder, ...] = (*LEGACY, *NEW)
