"""summary.json numbers against a recomputation from the rows done here with the standard library."""

from __future__ import annotations

import json
import statistics

import pytest
from _rows import grid, row
from scipy import stats as sps

from atomsift.experiment.summary import budget_key, fmt, metric_unit, ordinal, pm, summarize

CANDS = {
    "organic": {"csi": {"d1": 10.2, "d2": 5.0}, "ci": {"d1": (9.0, 11.0)}},
    "acac": {"csi": {"d1": 3.0, "d2": 50.0}, "ci": {"d1": (2.5, 10.0)}},
    "oxides": {"csi": {"d1": 200.0, "d2": 500.0}},
    "metals": {"csi": {"d1": 80.0, "d2": 100.0}},
    "organic+oxides": {"kind": "mixture", "members": "organic+oxides", "csi": {"d1": 50.0, "d2": 30.0}},
}
BASE = {"scratch": 88.0, "organic": 41.0, "acac": 60.0, "oxides": 70.0, "metals": 65.0, "organic+oxides": 45.0}
NOISE = {0: 0.0, 1: 2.5, 2: -1.25}


def value(name: str, down: str, budget: tuple[int, int], seed: int) -> float:
    return BASE[name] + NOISE[seed] + (3.0 if down == "d2" and name == "acac" else 0.0) + budget[1] / 100


def _ok_values(rows, name, down, budget=(500, 20)):
    return [
        r["value"]
        for r in rows
        if r["upstream"] == name
        and r["downstream"] == down
        and r["status"] == "ok"
        and r["value"] is not None
        and (name == "scratch" or (r["n_samples"], r["epochs"]) == budget)
    ]


def test_helpers() -> None:
    assert metric_unit("forces_mae_meV_per_A") == "meV/A"
    assert metric_unit("U0_mae_meV") == "meV"
    assert metric_unit("accuracy") == ""
    assert [ordinal(k) for k in (1, 2, 3, 4, 11, 12, 13, 21, 22)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd"
    ]  # fmt: skip
    assert budget_key(500, 20) == "N=500,E=20"


def test_candidate_numbers_equal_an_independent_recomputation() -> None:
    failed = [("acac", "d1", (500, 20), 1), ("scratch", "d1", None, 2)]
    pending = [("metals", "d1", (500, 20), 0)]
    rows = grid(CANDS, value, downstreams=("d1", "d2"), failed=failed, pending=pending)
    rows.append(row("oxides", "d1", 7, None, csi=200.0))  # "ok" but without a value: excluded, counted
    s = summarize(rows)
    json.dumps(s, allow_nan=False)  # summary.json must be plain JSON
    assert s["n_rows"] == len(rows)
    assert s["status_counts"] == {"ok": len(rows) - 3, "failed": 2, "pending": 1}
    assert len(s["excluded"]) == 4
    assert {(e["upstream"], e["seed"], e["status"]) for e in s["excluded"]} == {
        ("acac", 1, "failed"), ("scratch", 2, "failed"), ("metals", 0, "pending"), ("oxides", 7, "ok")
    }  # fmt: skip

    task = s["tasks"]["d1"]
    assert task["metric"] == "forces_mae_meV_per_A" and task["unit"] == "meV/A"
    sv = _ok_values(rows, "scratch", "d1")
    assert len(sv) == 2
    assert task["scratch"]["mean"] == pytest.approx(statistics.mean(sv))
    assert task["scratch"]["std"] == pytest.approx(statistics.stdev(sv))
    assert task["scratch"]["n"] == 2 and task["scratch"]["failed"] == 1

    b = task["budgets"]["N=500,E=20"]
    cands = {c["name"]: c for c in b["candidates"]}
    assert list(cands) == ["acac", "organic", "organic+oxides", "metals", "oxides"]  # by CSI
    means = {}
    for name in CANDS:
        vals = _ok_values(rows, name, "d1")
        c = cands[name]
        means[name] = statistics.mean(vals)
        assert c["n"] == len(vals)
        assert c["mean"] == pytest.approx(means[name])
        assert c["std"] == pytest.approx(statistics.stdev(vals))
        assert c["csi"] == CANDS[name]["csi"]["d1"]
        gain_abs = statistics.mean(sv) - means[name]
        assert c["gain_abs"] == pytest.approx(gain_abs)
        assert c["gain"] == pytest.approx(gain_abs / statistics.mean(sv))
    assert cands["acac"]["failed"] == 1 and cands["acac"]["n"] == 2
    assert cands["metals"]["pending"] == 1 and cands["metals"]["excluded"] == 1
    assert cands["oxides"]["excluded"] == 1 and cands["oxides"]["failed"] == 0
    by_mean = sorted(means, key=means.get)
    by_csi = sorted(CANDS, key=lambda n: CANDS[n]["csi"]["d1"])
    for name in CANDS:
        assert cands[name]["rank_metric"] == by_mean.index(name) + 1
        assert cands[name]["rank_csi"] == by_csi.index(name) + 1

    corr = b["correlation"]["all"]
    xs = [CANDS[n]["csi"]["d1"] for n in corr["candidates"]]
    ys = [means[n] for n in corr["candidates"]]
    assert corr["n"] == 5
    assert corr["spearman"]["statistic"] == pytest.approx(sps.spearmanr(xs, ys).statistic)
    assert corr["kendall"]["statistic"] == pytest.approx(sps.kendalltau(xs, ys).statistic)
    singles = b["correlation"]["singles"]
    assert sorted(singles["candidates"]) == ["acac", "metals", "organic", "oxides"]
    xs = [CANDS[n]["csi"]["d1"] for n in singles["candidates"]]
    ys = [means[n] for n in singles["candidates"]]
    assert singles["spearman"]["statistic"] == pytest.approx(sps.spearmanr(xs, ys).statistic)
    assert b["csi_ties"] == [["acac", "organic"]]

    # d1: the lowest CSI (acac) is not the best (organic); d2: organic has the lowest CSI and is best
    assert (b["lowest_csi"], b["best"], b["lowest_csi_was_best"]) == ("acac", "organic", False)
    assert b["lowest_csi_rank"] == by_mean.index("acac") + 1
    b2 = s["tasks"]["d2"]["budgets"]["N=500,E=20"]
    assert (b2["lowest_csi"], b2["best"], b2["lowest_csi_was_best"]) == ("organic", "organic", True)
    assert b2["lowest_csi_rank"] == 1


def test_verdict_states_the_numbers_and_the_weakness_of_the_test() -> None:
    rows = grid(CANDS, value, downstreams=("d1", "d2"), failed=[("acac", "d1", (500, 20), 1)])
    s = summarize(rows)
    b = s["tasks"]["d1"]["budgets"]["N=500,E=20"]
    acac = next(c for c in b["candidates"] if c["name"] == "acac")
    text = s["tasks"]["d1"]["verdict"]
    assert f"CSI ranked acac ({fmt(3.0)}) first, but it came {ordinal(acac['rank_metric'])} of 5" in text
    assert fmt(acac["mean"]) in text and "best was organic" in text
    assert "even a perfect ranking gives p = 0.083" in text  # 4 single datasets: 2/4! = 0.083
    assert "1 failed" in text
    assert "Fig. 4 check: mixture organic+oxides" in text
    text2 = s["tasks"]["d2"]["verdict"]
    assert "CSI ranked organic (5) first and it was best" in text2
    assert "beat scratch" in text2 and "gain" in text2


def test_lowest_csi_candidate_with_no_finished_run() -> None:
    fails = [("acac", "d1", (500, 20), seed) for seed in (0, 1, 2)]
    s = summarize(grid(CANDS, value, failed=fails))
    b = s["tasks"]["d1"]["budgets"]["N=500,E=20"]
    assert b["lowest_csi"] == "acac" and b["lowest_csi_was_best"] is None and b["lowest_csi_rank"] is None
    assert b["correlation"]["all"]["n"] == 4  # acac has a CSI but no ok seed
    assert "none of its runs finished (3 failed" in s["tasks"]["d1"]["verdict"]


def test_fewer_than_three_candidates_and_single_seed() -> None:
    two = {k: CANDS[k] for k in ("organic", "acac")}
    s = summarize(grid(two, value, seeds=(0,)))
    b = s["tasks"]["d1"]["budgets"]["N=500,E=20"]
    assert b["correlation"]["all"]["spearman"]["statistic"] is None
    assert "at least 3" in b["correlation"]["all"]["spearman"]["reason"]
    assert all(c["std"] is None and c["n"] == 1 for c in b["candidates"])
    assert s["tasks"]["d1"]["scratch"]["std"] is None
    assert "No rank correlation" in s["tasks"]["d1"]["verdict"]


def test_fig4_comparison_only_for_mixtures_holding_the_best_single() -> None:
    cands = dict(CANDS)
    cands["acac+metals"] = {"kind": "mixture", "members": "acac+metals", "csi": {"d1": 40.0}}
    base = dict(BASE, **{"acac+metals": 50.0, "organic+oxides": 42.0})
    rows = grid(cands, lambda n, d, b, s: base[n] + NOISE[s])
    b = summarize(rows)["tasks"]["d1"]["budgets"]["N=500,E=20"]
    assert [f["mixture"] for f in b["fig4"]] == ["organic+oxides"]
    f = b["fig4"][0]
    single, mix = _ok_values(rows, "organic", "d1"), _ok_values(rows, "organic+oxides", "d1")
    assert f["single"] == "organic"
    assert f["difference"] == pytest.approx(statistics.mean(mix) - statistics.mean(single))
    assert f["mixture_std"] == pytest.approx(statistics.stdev(mix))
    assert f["seed_spreads_overlap"] is (min(mix) <= max(single) and min(single) <= max(mix)) is True
    far = summarize(grid(cands, lambda n, d, b, s: dict(base, **{"organic+oxides": 60.0})[n] + NOISE[s]))
    assert far["tasks"]["d1"]["budgets"]["N=500,E=20"]["fig4"][0]["seed_spreads_overlap"] is False
    singles_only = {k: v for k, v in CANDS.items() if "+" not in k}
    assert summarize(grid(singles_only, value))["tasks"]["d1"]["budgets"]["N=500,E=20"]["fig4"] == []


def test_several_budgets_metric_vs_budget_and_equal_budget_groups() -> None:
    budgets = [(500, 20), (1000, 10), (250, 20)]
    rows = grid(CANDS, value, budgets=budgets)
    task = summarize(rows)["tasks"]["d1"]
    keys = [budget_key(n, e) for n, e in budgets]
    assert set(task["budgets"]) == set(keys)
    assert list(task["budgets"]) == ["N=250,E=20", "N=500,E=20", "N=1000,E=10"]  # by budget C, then N
    vs = task["vs_budget"]
    for name in CANDS:
        for (n, e), key in zip(budgets, keys, strict=True):
            assert vs["means"][name][key] == pytest.approx(statistics.mean(_ok_values(rows, name, "d1", (n, e))))
    assert len(vs["n_vs_e"]) == 1
    g = vs["n_vs_e"][0]
    assert g["budget"] == 10000 and set(g["settings"]) == {"N=500,E=20", "N=1000,E=10"}
    want = sorted(CANDS, key=lambda n: statistics.mean(_ok_values(rows, n, "d1", (1000, 10))))
    assert g["orders"]["N=1000,E=10"] == want
    assert "Equal budget C=10000" in task["verdict"] and "same order" in task["verdict"]
    assert summarize(grid(CANDS, value))["tasks"]["d1"]["vs_budget"] is None


def test_mean_and_spread_are_printed_to_the_spread_s_second_digit() -> None:
    assert pm(151.9123, 0.5271) == "151.91 ± 0.53"
    assert pm(200.2, 10.5) == "200 ± 10"  # 10.5 to two digits (round half to even)
    assert pm(199.74, 6.04) == "199.7 ± 6.0"
    assert pm(3.14159, 9.96) == "3 ± 10"  # 9.96 rounds up to 10: one decimal place fewer
    assert pm(123456.0, 2345.0) == "123500 ± 2300"  # the mean to the spread's hundreds
    assert pm(0.01234, 0.000456) == f"{fmt(0.01234)} ± {fmt(0.000456)}"  # spreads below 1e-3: fmt
    assert pm(5.0, 0.0) == "5 ± 0" and pm(5.0, None) == "5" and pm(None, None) == "-"


def test_the_verdict_says_when_the_seeds_do_not_resolve_the_best():
    """Four candidates within 0.7 meV/A of each other, against a seed spread of about 10, got 'ranked first and
    it was best' without a word on the spread (the experiment review)."""
    values = {"a": (824.0, 844.0), "b": (825.0, 843.0), "c": (900.0, 910.0)}  # a and b overlap; c lies apart
    rows = [
        row(name, "d", seed, v, csi=csi)
        for name, csi in (("a", 1.0), ("b", 2.0), ("c", 3.0))
        for seed, v in enumerate(values[name])
    ]
    text = summarize(rows)["tasks"]["d"]["verdict"]
    assert "The seed range of a overlaps that of b: these seeds do not tell them apart" in text
    apart = [r for r in rows if r["upstream"] != "b"]
    assert "seed range of" not in summarize(apart)["tasks"]["d"]["verdict"]
