"""Sample data: a simulated nucleus whose rate map is known (File > Open Sample > chromflow).

The nucleus comes from :func:`chromflow.simulate.simulate_nucleus` (random smooth rate map and
total chromatin, steady state of the chromatin model, blinking localizations of a
heterochromatin and a euchromatin mark). The plugin opens the rendered density of both
channels and the true rate map, so the inferred map can be compared with the truth in place.
"""
from __future__ import annotations


from ._layers import image_layer_kwargs, robust_contrast_limits

__all__ = ["simulated_nucleus", "SAMPLE_SETTINGS"]

#: what File > Open Sample simulates: a 10 um nucleus, 128-cell grid, 1e6 localizations over both marks
#: (a realistic count for chromatin STORM; sparser data give noisier rate maps)
SAMPLE_SETTINGS = {"grid": 128, "nucleus_um": 10.0, "seed": 0, "n_localizations": 1_000_000}


def simulated_nucleus(pixel_size: float = 40.0, **settings) -> list:
    """Layer-data tuples for a simulated nucleus with a known rate map.

    Parameters
    ----------
    pixel_size : float
        Pixel size (nm) of the rendered density image.
    **settings
        Override :data:`SAMPLE_SETTINGS` (passed to :func:`chromflow.simulate.simulate_nucleus`),
        e.g. ``grid=48, n_localizations=5000`` for a quick test.

    Returns
    -------
    list of tuple
        ``[(density, kwargs, "image"), (true_rate, kwargs, "image")]``, both in nm world
        coordinates; the density layer's metadata keeps the localizations (for the render
        widget) and the true rate layer's metadata the whole simulation.

    Examples
    --------
    >>> layers = simulated_nucleus(grid=32, n_localizations=2000)   # doctest: +SKIP
    >>> [kwargs["name"] for _, kwargs, _ in layers]                  # doctest: +SKIP
    ['simulated nucleus density', 'simulated nucleus true rate']
    """
    import chromflow as cf
    from chromflow.simulate import simulate_nucleus

    from ._reader import rows_to_draw

    sim = simulate_nucleus(**{**SAMPLE_SETTINGS, **settings})
    locs = sim.localizations
    locs.attrs.setdefault("source", None)
    # the field of view of the simulation grid, so density and truth cover the same area
    n = sim.rate.shape[0]
    edge = n * sim.spacing_nm
    oy, ox = (o - sim.spacing_nm / 2 for o in sim.origin)
    # rendered as a file opened in napari is (the reader's blink merging)
    drawn, drawn_meta = rows_to_draw(locs)
    density = cf.render(drawn, pixel_size=pixel_size, method="gaussian",
                        fov=(oy, ox, oy + edge, ox + edge))
    density.name = "simulated nucleus density"
    density.metadata = {**density.metadata, "kind": "density", "source": None,
                        "localizations": locs, "render_method": "gaussian", **drawn_meta}
    truth = cf.Image(sim.rate, pixel_size=sim.spacing_nm, origin=sim.origin,
                     name="simulated nucleus true rate",
                     metadata={"kind": "true_rate", "source": None, "simulation": sim})
    return [
        (density.data, image_layer_kwargs(density, colormap="gray"), "image"),
        (truth.data, image_layer_kwargs(truth, colormap="viridis", visible=False,
                                        contrast_limits=robust_contrast_limits(sim.rate, sim.mask)),
         "image"),
    ]
