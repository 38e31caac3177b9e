"""UCUM unit normalisation for the lab values a cohort asks for.

Quantities are converted to the unit of the cohort's feature: by SI prefixes within one
dimension (mg/dL <-> g/L, ng/L <-> pg/mL), from amount to mass concentration with the
analyte's molar mass (glucose mmol/L -> mg/dL: x 18.016), or by a published equation
(HbA1c IFCC mmol/mol -> NGSP %, Hoelzel et al., Clin Chem 2004). Anything else raises
`UnitError`; the observation is quarantined, never guessed.

LOINC has separate codes for molar and mass measurements of one analyte; `CODE_ALIASES`
maps the molar codes onto the mass codes cohorts use (the specimen differs slightly, e.g.
15074-8 is blood glucose and 2345-7 serum/plasma glucose; close enough for a risk model).
"""

from __future__ import annotations

import re

from ..errors import UnitError

LOINC = "http://loinc.org"

#: (system, code) of an alternative code -> (system, code) of the feature it measures.
CODE_ALIASES: dict[tuple[str, str], tuple[str, str]] = {
    (LOINC, "15074-8"): (LOINC, "2345-7"),  # Glucose [Moles/volume] in Blood
    (LOINC, "14749-6"): (LOINC, "2345-7"),  # Glucose [Moles/volume] in Serum or Plasma
    (LOINC, "14647-2"): (LOINC, "2093-3"),  # Cholesterol [Moles/volume] in Serum or Plasma
    (LOINC, "14682-9"): (LOINC, "2160-0"),  # Creatinine [Moles/volume] in Serum or Plasma
    (LOINC, "59261-8"): (LOINC, "4548-4"),  # Hemoglobin A1c/Hemoglobin.total (IFCC)
}

#: g/mol, keyed by the feature's LOINC code.
MOLAR_MASS: dict[str, float] = {
    "2345-7": 180.156,  # glucose
    "2093-3": 386.654,  # cholesterol
    "2160-0": 113.118,  # creatinine
    "33762-6": 8457.0,  # NT-proBNP (1 pmol/L = 8.457 pg/mL)
}

#: Spellings seen in hospital feeds -> UCUM.
SYNONYMS = {
    "mmhg": "mm[Hg]", "mm hg": "mm[Hg]", "kg/m^2": "kg/m2", "kg/m²": "kg/m2",
    "mg/dl": "mg/dL", "mmol/l": "mmol/L", "umol/l": "umol/L", "µmol/l": "umol/L", "μmol/l": "umol/L",
    "pg/ml": "pg/mL", "ng/l": "ng/L", "pmol/l": "pmol/L", "g/l": "g/L", "mg/l": "mg/L",
    "years": "a", "yr": "a", "percent": "%",
}

_MASS = {"g": 1.0, "mg": 1e-3, "ug": 1e-6, "ng": 1e-9, "pg": 1e-12}
_AMOUNT = {"mol": 1.0, "mmol": 1e-3, "umol": 1e-6, "nmol": 1e-9, "pmol": 1e-12}
_VOLUME = {"L": 1.0, "dL": 0.1, "mL": 1e-3}
_CONCENTRATION = re.compile(r"^([a-z]+)/([a-zA-Z]+)$")


def canonical_unit(unit: str | None) -> str | None:
    if unit is None:
        return None
    unit = unit.strip()
    return SYNONYMS.get(unit.lower(), unit)


def _concentration(unit: str) -> tuple[str, float] | None:
    """'mmol/L' -> ('amount', 1e-3) in mol/L; 'mg/dL' -> ('mass', 1e-2) in g/L."""
    m = _CONCENTRATION.match(unit)
    if not m or m.group(2) not in _VOLUME:
        return None
    num, vol = m.group(1), _VOLUME[m.group(2)]
    if num in _MASS:
        return "mass", _MASS[num] / vol
    if num in _AMOUNT:
        return "amount", _AMOUNT[num] / vol
    return None


def convert(value: float, unit: str | None, target: str | None, *, code: str, source: str = "") -> float:
    """`value` in `unit` expressed in `target` for the analyte with LOINC `code`."""
    unit, target = canonical_unit(unit), canonical_unit(target)
    if target is None or unit == target:
        return value
    if code == "4548-4" and unit == "mmol/mol" and target == "%":
        return 0.09148 * value + 2.152
    if code == "4548-4" and unit == "%" and target == "mmol/mol":
        return (value - 2.152) / 0.09148
    a, b = (_concentration(unit) if unit else None), _concentration(target)
    if a and b:
        (kind_a, fa), (kind_b, fb) = a, b
        if kind_a == kind_b:
            return value * fa / fb
        if code in MOLAR_MASS:
            mm = MOLAR_MASS[code]
            return value * fa * mm / fb if kind_a == "amount" else value * fa / mm / fb
    raise UnitError(
        f"unit {unit!r} for LOINC {code} cannot be converted to {target!r}; expected {target!r} or a "
        "UCUM concentration unit of the same analyte. Fix the unit at the source or add a conversion "
        "to pipelines/ehr/units.py",
        source=source or None,
    )
