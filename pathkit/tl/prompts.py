"""Prompt library for zero-shot classification: templates and class names as published.

Sources (read from the authors' repositories):
- Templates: the 22 of CONCH (github.com/mahmoodlab/CONCH, prompts/nsclc_prompts_all_per_class.json and
  prompts/crc100k_prompts_all_per_class.json). The first 16 are MI-Zero's template pool
  (github.com/mahmoodlab/MI-Zero, src/presample_prompts.py); CONCH adds the 6 "H&E" templates.
- NSCLC (LUAD / LUSC): CONCH's class names (prompts/nsclc_prompts_all_per_class.json); MI-Zero's larger pool
  is `nsclc_mizero`.
- RCC (CCRCC / PRCC / CHRCC) and BRCA (IDC / ILC): MI-Zero's class-name pools (src/presample_prompts.py).
- TITAN (slide-level zero-shot): its 23 templates (github.com/mahmoodlab/TITAN, titan/utils.py) and the 46
  TCGA-OT classes of its zero-shot evaluation (datasets/config_tcga-ot.yaml), shipped as
  pathkit/data/prompts/titan.json with their source: ``get_templates("titan")``, ``get_classes("tcga_ot")``.
- Colorectal (CRC100K tissue classes ADI, BACK, DEB, LYM, MUC, MUS, NORM, STR, TUM): CONCH's
  prompts/crc100k_prompts_all_per_class.json. CONCH publishes no TCGA COADREAD slide-level task; "coadread"
  is an alias of these colorectal tissue classes (tile-level tissue types, useful as tile scores).

`CLASSNAME` in a template is replaced by a class name.
"""
from __future__ import annotations

import numpy as np

PLACEHOLDER = "CLASSNAME"

CONCH_TEMPLATES = (
    "CLASSNAME.",
    "a photomicrograph showing CLASSNAME.",
    "a photomicrograph of CLASSNAME.",
    "an image of CLASSNAME.",
    "an image showing CLASSNAME.",
    "an example of CLASSNAME.",
    "CLASSNAME is shown.",
    "this is CLASSNAME.",
    "there is CLASSNAME.",
    "a histopathological image showing CLASSNAME.",
    "a histopathological image of CLASSNAME.",
    "a histopathological photograph of CLASSNAME.",
    "a histopathological photograph showing CLASSNAME.",
    "shows CLASSNAME.",
    "presence of CLASSNAME.",
    "CLASSNAME is present.",
    "an H&E stained image of CLASSNAME.",
    "an H&E stained image showing CLASSNAME.",
    "an H&E image showing CLASSNAME.",
    "an H&E image of CLASSNAME.",
    "CLASSNAME, H&E stain.",
    "CLASSNAME, H&E.",
)
MIZERO_TEMPLATES = CONCH_TEMPLATES[:16]

TEMPLATES = {"conch": CONCH_TEMPLATES, "mizero": MIZERO_TEMPLATES}

CLASSES = {
    "nsclc": {
        "LUAD": ["adenocarcinoma", "lung adenocarcinoma", "adenocarcinoma of the lung", "LUAD"],
        "LUSC": ["squamous cell carcinoma", "lung squamous cell carcinoma", "squamous cell carcinoma of the lung",
                 "LUSC"],
    },
    "nsclc_mizero": {
        "LUAD": ["adenocarcinoma", "lung adenocarcinoma", "adenocarcinoma of the lung", "pulmonary adenocarcinoma",
                 "adenocarcinoma, lepidic pattern", "adenocarcinoma, solid pattern",
                 "adenocarcinoma, micropapillary pattern", "adenocarcinoma, acinar pattern",
                 "adenocarcinoma, papillary pattern"],
        "LUSC": ["squamous cell carcinoma", "lung squamous cell carcinoma", "squamous cell carcinoma of the lung",
                 "pulmonary squamous cell carcinoma"],
    },
    "rcc": {
        "CCRCC": ["clear cell renal cell carcinoma", "renal cell carcinoma, clear cell type",
                  "renal cell carcinoma of the clear cell type", "clear cell RCC"],
        "PRCC": ["papillary renal cell carcinoma", "renal cell carcinoma, papillary type",
                 "renal cell carcinoma of the papillary type", "papillary RCC"],
        "CHRCC": ["chromophobe renal cell carcinoma", "renal cell carcinoma, chromophobe type",
                  "renal cell carcinoma of the chromophobe type", "chromophobe RCC"],
    },
    "brca": {
        "IDC": ["invasive ductal carcinoma", "carcinoma of the breast, ductal pattern"],
        "ILC": ["invasive lobular carcinoma", "carcinoma of the breast, lobular pattern"],
    },
    "crc100k": {
        "ADI": ["adipose", "adipose tissue", "adipocytes", "fat", "fat cells"],
        "BACK": ["background", "penmarking", "empty space", "background artifacts"],
        "DEB": ["debris", "colorectal adenocarcinoma debris and necrosis", "necrosis", "necrotic debris"],
        "LYM": ["lymphocytes", "lymphoid aggregate", "immune cells", "lymphoid infiltrate", "inflammatory cells"],
        "MUC": ["mucus", "mucin", "mucus pool", "mucin pool"],
        "MUS": ["smooth muscle", "smooth muscle tissue", "muscle", "muscularis propria", "muscularis mucosa"],
        "NORM": ["normal colon mucosa", "uninvolved colon mucosa", "normal colonic mucosa", "benign epithelium"],
        "STR": ["cancer-associated stroma", "tumor-associated stroma", "stromal cells", "stromal tissue", "stroma"],
        "TUM": ["colorectal adenocarcinoma epithelium", "colorectal adenocarcinoma", "tumor", "adenocarcinoma",
                "malignant epithelium"],
    },
}
ALIASES = {"coadread": "crc100k", "crc": "crc100k", "lung": "nsclc", "kidney": "rcc", "breast": "brca"}


def _published(name: str) -> dict:
    """A prompt set shipped as data in pathkit/data/prompts/<name>.json (with its source)."""
    import json
    from pathlib import Path

    return json.loads((Path(__file__).parents[1] / "data" / "prompts" / f"{name}.json").read_text(encoding="utf-8"))


# TITAN (slide level): its 23 templates (titan/utils.py) and the TCGA-OT class names of its zero-shot
# evaluation (46 OncoTree classes, datasets/config_tcga-ot.yaml); sources in the JSON file.
TITAN_PROMPTS = _published("titan")
TITAN_TEMPLATES = tuple(TITAN_PROMPTS["templates"])
TEMPLATES["titan"] = TITAN_TEMPLATES
CLASSES.update(TITAN_PROMPTS["classes"])


def list_prompt_sets() -> list[str]:
    """Names accepted by `get_classes` (aliases included)."""
    return sorted(CLASSES) + sorted(ALIASES)


def get_classes(classes) -> dict[str, list[str]]:
    """A task name ("nsclc", "rcc", "brca", "crc100k", ...) or a dict {class: name | [names]} ->
    {class: [names]} (a fresh copy)."""
    if isinstance(classes, str):
        key = ALIASES.get(classes.lower(), classes.lower())
        if key not in CLASSES:
            raise KeyError(f"unknown prompt set {classes!r}; known: {', '.join(list_prompt_sets())} "
                           "(or pass a dict {class: [names]})")
        classes = CLASSES[key]
    if not isinstance(classes, dict) or len(classes) < 2:
        raise ValueError("classes must be a task name or a dict {class: [names]} with at least two classes")
    out = {}
    for c, names in classes.items():
        names = [names] if isinstance(names, str) else list(names)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"class {c!r}: give at least one non-empty class name (got {names!r})")
        out[str(c)] = names
    return out


def get_templates(templates=None) -> list[str]:
    """None or "conch" -> the 22 CONCH templates; "mizero" -> MI-Zero's 16; "titan" -> TITAN's 23; a list is
    checked and returned."""
    if templates is None:
        return list(CONCH_TEMPLATES)
    if isinstance(templates, str):
        if templates.lower() in TEMPLATES:
            return list(TEMPLATES[templates.lower()])
        templates = [templates]
    templates = list(templates)
    bad = [t for t in templates if PLACEHOLDER not in t]
    if not templates or bad:
        raise ValueError(f"every template must contain {PLACEHOLDER!r}; these do not: {bad}")
    return templates


def fill(template: str, name: str) -> str:
    return template.replace(PLACEHOLDER, name)


def sample_prompt_sets(classes: dict[str, list[str]], n_templates: int, n_sets: int = 50, seed: int = 0):
    """MI-Zero's prompt-set sampling (src/presample_prompts.py): for each set, a size drawn uniformly from
    1..n_templates, one class name per class drawn uniformly from its pool, and that many distinct templates.

    Returns (names [n_sets, n_classes] indices into each class's name list, template mask
    [n_sets, n_templates] bool).
    """
    rng = np.random.default_rng(seed)
    names = np.zeros((n_sets, len(classes)), dtype=np.int64)
    mask = np.zeros((n_sets, n_templates), dtype=bool)
    for s in range(n_sets):
        size = int(rng.integers(1, n_templates + 1))
        names[s] = [rng.integers(len(pool)) for pool in classes.values()]
        mask[s, rng.choice(n_templates, size=size, replace=False)] = True
    return names, mask
