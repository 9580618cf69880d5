"""Every JSON file chromflow writes is strict JSON (RFC 8259): no NaN or Infinity tokens."""
import json

import numpy as np
import pytest

from chromflow._json import jsonable


def _strict(text):
    def refuse(token):
        raise ValueError(f"non-standard JSON number {token}")

    return json.loads(text, parse_constant=refuse)


def test_jsonable_maps_numpy_and_non_finite_values_to_plain_json():
    value = {"r": np.float32(0.25), "n": np.int64(7), "ok": np.bool_(True), "nan": float("nan"),
             "inf": np.float64(-np.inf), 3: (1, np.array([0.5, np.nan])), "path": object}
    out = jsonable(value)
    assert out == {"r": 0.25, "n": 7, "ok": True, "nan": None, "inf": None, "3": [1, [0.5, None]],
                   "path": str(object)}
    assert type(out["r"]) is float and type(out["n"]) is int and type(out["ok"]) is bool
    _strict(json.dumps(out, allow_nan=False))


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_saved_rate_map_with_non_finite_diagnostics_is_strict_json_and_loads_back_as_nan(tmp_path, suffix):
    from chromflow.inverse import RateMapResult

    m = np.zeros((12, 12), bool)
    m[2:10, 2:10] = True
    arr = np.where(m, 1.0, np.nan)
    r = RateMapResult(rate=arr, uncertainty=arr * 0.1, residual=arr * 0, phi_h=arr * 0.3, phi_e=arr * 0.2,
                      mask=m, spacing=50.0, origin=(0.0, 0.0), method="pinn")
    # a ring profile with no noise reads chi^2 = inf; a split-half score can be NaN
    r.diagnostics = {"flags": [], "split_half_r": np.float32("nan"),
                     "boundary_layer": {"applied": False, "weight": 0.0, "chi2": np.inf}}
    path = tmp_path / f"r{suffix}"
    r.save(path)
    if suffix == ".npz":
        with np.load(path) as z:
            meta = str(z["meta"])
    else:
        import h5py

        with h5py.File(path, "r") as f:
            meta = f.attrs["meta"]
    stored = _strict(meta)["diagnostics"]
    assert stored["split_half_r"] is None and stored["boundary_layer"]["chi2"] is None
    back = RateMapResult.load(path)
    assert np.isnan(back.summary()["split_half_r"])
    np.testing.assert_array_equal(back.rate, r.rate)
