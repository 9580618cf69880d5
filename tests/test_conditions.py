"""Conditions across nuclei (chromflow.conditions): grouping, log-normal fits, rank tests, batch."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import chromflow as cf
from chromflow.conditions import (assign_conditions, compare_conditions, condition_from_name, fit_lognormal,
                                  nucleus_rates, read_sample_sheet, write_conditions)
from chromflow.errors import InputError
from chromflow.simulate import simulate_domains


def test_condition_from_the_file_name():
    assert condition_from_name("ctrl_01.csv") == "ctrl"
    assert condition_from_name("/data/TSA_day2_07.hdf5") == "TSA_day2"
    assert condition_from_name("nucleus.csv") == "nucleus"
    assert assign_conditions(["a_1.csv", "b_2.csv"]) == ["a", "b"]


def test_sample_sheet(tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("file,condition\nrun1/cell_a.csv,control\ncell_b.csv, TSA\n")
    assert read_sample_sheet(sheet) == {"cell_a.csv": "control", "cell_b.csv": "TSA"}
    assert assign_conditions(["x/cell_a.csv", "cell_b.csv"], sheet) == ["control", "TSA"]
    with pytest.raises(InputError, match="no condition for cell_c.csv"):
        assign_conditions(["cell_c.csv"], sheet)
    (tmp_path / "bad.csv").write_text("name,group\na,b\n")
    with pytest.raises(InputError, match="columns 'file' and 'condition'"):
        read_sample_sheet(tmp_path / "bad.csv")
    (tmp_path / "twice.csv").write_text("file,condition\na.csv,x\na.csv,y\n")
    with pytest.raises(InputError, match="two conditions"):
        read_sample_sheet(tmp_path / "twice.csv")
    with pytest.raises(InputError, match="not found"):
        read_sample_sheet(tmp_path / "missing.csv")


def test_lognormal_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=1.0, sigma=0.5, size=20000)
    mu, sigma, n = fit_lognormal(np.r_[values, np.nan, -1.0, 0.0])   # invalid values left out
    assert n == 20000 and mu == pytest.approx(1.0, abs=0.01) and sigma == pytest.approx(0.5, rel=0.02)
    assert all(math.isnan(v) for v in fit_lognormal([3.0])[:2])


def test_nucleus_rates_from_a_domain_table():
    table = pd.DataFrame({"gamma_ac": [np.e, np.e ** 3, 100.0], "gamma_me": [1.0, np.e ** 2, 5.0],
                          "lam": [0.1, 0.3, np.nan], "peripheral": [False, False, True]})
    row = nucleus_rates((table, {"mean_domain_diameter_nm": 120.0, "lad_thickness_nm": None}))
    assert row["n_domains"] == 2
    assert row["gamma_ac_mu"] == pytest.approx(2.0) and row["gamma_ac_median"] == pytest.approx(np.e ** 2)
    assert row["gamma_me_sigma"] == pytest.approx(1.0)
    assert row["median_lam"] == pytest.approx(0.2)
    assert row["mean_domain_diameter_nm"] == 120.0 and math.isnan(row["lad_thickness_nm"])


def test_rank_tests_two_and_three_conditions():
    t = pd.DataFrame({"condition": ["a"] * 4 + ["b"] * 4 + ["c"] * 3,
                      "x": [1, 2, 3, 4, 11, 12, 13, 14, 21, 22, 23], "y": [1.0] * 11})
    per, tests = compare_conditions(t[t["condition"] != "c"], ["x"])
    # fully separated 4 vs 4: exact two-sided Mann-Whitney p = 2 / C(8, 4)
    assert tests.loc[0, "test"] == "mann-whitney" and tests.loc[0, "p_value"] == pytest.approx(2 / 70)
    assert tests.loc[0, "n"] == "a=4, b=4"
    a = per[(per["condition"] == "a") & (per["value"] == "x")].iloc[0]
    assert a["mean"] == 2.5 and a["sd"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1)) and a["n"] == 4
    _, tests3 = compare_conditions(t, ["x"])
    # ranks 1-4, 5-8, 9-11: H = 12 / (11 * 12) * (10^2/4 + 26^2/4 + 30^2/3) - 3 * 12; chi2 with 2 dof
    h = 12 / 132 * (100 / 4 + 676 / 4 + 900 / 3) - 36
    assert tests3.loc[0, "test"] == "kruskal" and tests3.loc[0, "statistic"] == pytest.approx(h)
    assert tests3.loc[0, "p_value"] == pytest.approx(math.exp(-h / 2))
    _, one = compare_conditions(t[t["condition"] == "a"], ["x"])
    assert one.loc[0, "note"].startswith("one condition") and math.isnan(one.loc[0, "p_value"])
    _, few = compare_conditions(pd.concat([t[t["condition"] == "a"], t[t["condition"] == "b"].head(1)]), ["x"])
    assert "fewer than 2 nuclei" in few.loc[0, "note"]


def test_write_conditions_files(tmp_path):
    t = pd.DataFrame({"condition": ["a"] * 3 + ["b"] * 3, "median_lam": [0.1, 0.12, 0.11, 0.2, 0.22, 0.21]})
    paths = write_conditions(t, tmp_path, ["median_lam"], kind="domains",
                             domains={"a": [0.1, 0.2, 0.3], "b": [0.3, 0.4, 0.5]})
    assert sorted(p.name for p in paths.values()) == ["condition_tests_domains.csv", "conditions_domains.csv",
                                                      "conditions_domains.png"]
    tests = pd.read_csv(paths["tests"])
    assert tests.loc[0, "p_value"] == pytest.approx(0.1)   # 3 vs 3 fully separated: 2 / C(6, 3)


def test_batch_domains_with_a_sample_sheet(tmp_path, capsys):
    from chromflow.cli import main

    data = tmp_path / "in"
    data.mkdir()
    # four times the density of the known-answer clouds: the default thinning (1 in 4) brings it back
    for i, (name, radius) in enumerate([("ctrl_1", 60.0), ("ctrl_2", 60.0), ("tsa_1", 110.0), ("tsa_2", 110.0)]):
        sim = simulate_domains(nucleus_radius=1300.0, domain_radius=radius, spacing=6 * radius, domain_density=0.06,
                               background_density=0.012, band_thickness=80.0, seed=i)
        cf.write_localizations(sim.localizations, data / f"{name}.csv")
    (data / "broken_1.csv").write_text("x [nm],y [nm]\n1,2\n")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("file,condition\nctrl_1.csv,control\nctrl_2.csv,control\ntsa_1.csv,TSA\ntsa_2.csv,TSA\n"
                     "broken_1.csv,control\n")
    out = tmp_path / "out"
    code = main(["batch", str(data), "--out", str(out), "--domains", "--sample-sheet", str(sheet), "--quiet"])
    assert code == 1                       # one file failed, the others went on
    summary = pd.read_csv(out / "domains_summary.csv")
    assert summary.set_index("input").loc["broken_1.csv", "status"] == "failed"
    ok = summary[summary["status"] == "ok"]
    assert len(ok) == 4 and set(ok["condition"]) == {"control", "TSA"}
    assert (out / "ctrl_1_domains.csv").exists() and (out / "tsa_2_domains.png").exists()
    per = pd.read_csv(out / "conditions_domains.csv").set_index(["condition", "value"])
    ctrl = per.loc[("control", "mean_domain_diameter_nm"), "mean"]
    tsa = per.loc[("TSA", "mean_domain_diameter_nm"), "mean"]
    assert ctrl == pytest.approx(120.0, rel=0.15) and tsa == pytest.approx(220.0, rel=0.15)
    tests = pd.read_csv(out / "condition_tests_domains.csv").set_index("value")
    assert tests.loc["mean_domain_diameter_nm", "test"] == "mann-whitney"
    assert tests.loc["mean_domain_diameter_nm", "n"] == "control=2, TSA=2"
    assert tests.loc["mean_domain_diameter_nm", "p_value"] == pytest.approx(1 / 3)   # smallest p for 2 vs 2
    assert (out / "conditions_domains.png").read_bytes()[:4] == b"\x89PNG"


def test_rate_map_batch_table_compares_conditions(tmp_path):
    import argparse

    from chromflow.cli import _batch_conditions

    table = pd.DataFrame({"input": ["ctrl_1.csv", "ctrl_2.csv", "ctrl_3.csv", "tsa_1.csv", "tsa_2.csv", "tsa_3.csv",
                                    "tsa_4.csv"],
                          "status": ["ok", "skipped", "ok", "ok", "ok", "ok", "failed"],
                          "mean_rate": [1.0, 1.1, 1.2, 2.0, 2.1, 2.2, np.nan], "median_rate": [1.0] * 6 + [np.nan]})
    args = argparse.Namespace(out=tmp_path, sample_sheet=None, quiet=True)
    _batch_conditions(args, table)
    tests = pd.read_csv(tmp_path / "condition_tests_rates.csv").set_index("value")
    assert tests.loc["mean_rate", "n"] == "ctrl=3, tsa=3"            # the failed file is left out
    assert tests.loc["mean_rate", "p_value"] == pytest.approx(0.1)    # 3 vs 3 fully separated
    per = pd.read_csv(tmp_path / "conditions_rates.csv").set_index(["condition", "value"])
    assert per.loc[("tsa", "mean_rate"), "mean"] == pytest.approx(2.1)
    # one condition from the names and no sample sheet: nothing to compare, nothing written
    _batch_conditions(argparse.Namespace(out=tmp_path / "one", sample_sheet=None, quiet=True), table.head(3))
    assert not (tmp_path / "one").exists()
