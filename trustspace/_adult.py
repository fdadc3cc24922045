"""The Adult data set that ships in ``demos/data/adult`` (source checkouts): where it is, its
column types and the quasi-identifiers of the anonymization literature (see its SOURCE.md)."""

from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).resolve().parents[1] / "demos" / "data" / "adult"
CSV = DIR / "adult.csv"  # ';'-separated, with a header, 30,162 rows, no missing values
SEP = ";"
COLUMNS = {
    "sex": "str",
    "age": "int",
    "race": "str",
    "marital-status": "str",
    "education": "str",
    "native-country": "str",
    "workclass": "str",
    "occupation": "str",
    "salary-class": "str",
}
#: The 8 standard quasi-identifiers; ``salary-class`` is the sensitive attribute.
QUASI_IDENTIFIERS = (
    "age",
    "sex",
    "race",
    "marital-status",
    "education",
    "native-country",
    "workclass",
    "occupation",
)


def hierarchy_path(column: str) -> Path:
    """The ARX hierarchy CSV of ``column``."""
    return DIR / f"adult_hierarchy_{column}.csv"
