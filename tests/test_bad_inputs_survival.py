"""Issue 28, item 14: survival edge cases. R's survival package and lifelines agree that none of these
gives a usable answer (no event: no hazard ratio, no log-rank contrast; a constant or collinear covariate:
no coefficient; an infinite time: not a follow-up); pathkit now says so, naming the column, instead of a
lifelines error, an empty table, p = 1 or all rows in one group. Each test failed before its fix."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit.errors import TableError


@pytest.fixture
def df():
    rng = np.random.default_rng(0)
    n = 60
    age = rng.normal(60, 10, n)
    return pd.DataFrame({"time": rng.exponential(100, n) * np.exp(-(age - 60) / 20), "event": rng.integers(0, 2, n),
                         "age": age, "site": "colon", "score": rng.normal(size=n),
                         "grp": np.repeat(["a", "b"], n // 2)})


def test_cox_edge_cases(df):
    with pytest.raises(TableError, match="no event among the 60 rows"):
        pk.tl.cox(df.assign(event=0), "time", "event", ["age"])
    with pytest.raises(TableError, match=r"covariate 'site' has a single value \['colon'\]"):
        pk.tl.cox(df, "time", "event", ["age", "site"])
    with pytest.raises(TableError, match=r"\['age_months'\] are linear combinations"):
        pk.tl.cox(df.assign(age_months=df["age"] * 12), "time", "event", ["age", "age_months"])
    with pytest.raises(TableError, match=r"time column 'time' has 1 infinite value"):
        pk.tl.cox(df.assign(time=df["time"].where(df.index != 3, np.inf)), "time", "event", ["age"])
    fit = pk.tl.cox(df, "time", "event", ["age"])  # the good model still fits, hazard ratio > 1 for age
    assert fit.hazard_ratios["age"] > 1


def test_logrank_and_risk_groups_edge_cases(df):
    with pytest.raises(TableError, match="no event among the 60 rows"):
        pk.tl.logrank(df.assign(event=0), "time", "event", "grp")
    with pytest.warns(UserWarning, match="numeric with 60 distinct values"):
        pk.tl.logrank(df, "time", "event", "score")
    with pytest.raises(TableError, match=r"score 'c' has a single value \(2\)"):
        pk.tl.risk_groups(df.assign(c=2.0), "c")
    with pytest.warns(UserWarning, match=r"group\(s\) \['low'\] are empty"):
        pk.tl.risk_groups(df.assign(c=[1.0] * 59 + [5.0]), "c", method=0.5)
