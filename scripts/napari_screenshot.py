"""Make docs/images/napari_rate_map.png: the plugin driven for real on a two-channel file.

Run under an X server of at least 1920x1080 (a hidden napari viewer screenshots black)::

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/napari_screenshot.py

Steps, all through the plugin's public entry points: open the file with the chromflow reader
(one density layer per channel), dock the four widgets from the manifest, segment the
heterochromatin channel, infer with both channels, then show the rate map and its uncertainty
side by side (napari grid mode, each with the nucleus outline and its colorbar) and grab the
whole 1920x1080 window.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=str(ROOT / "sample_data" / "nucleus_two_channel.csv"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "napari_rate_map.png"))
    parser.add_argument("--pixel-size", type=float, default=40.0, help="density pixels (nm)")
    parser.add_argument("--grid", type=int, default=80)
    parser.add_argument("--method", default="pinn")
    parser.add_argument("--iterations", type=int, default=None, help="default: the library's")
    parser.add_argument("--ensemble", type=int, default=1, help="fits averaged into the rate")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    os.environ.setdefault("CHROMFLOW_NAPARI_SYNC", "1")  # the GUI waits for the run

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title="chromflow")
    window = viewer.window
    started = time.perf_counter()
    viewer.open(args.file, plugin="chromflow")
    docked = {}
    for name in ["Render localizations", "Segment nucleus", "Infer reaction rates", "Rate map results"]:
        _, widget = window.add_plugin_dock_widget("chromflow", name)
        docked[name] = widget
    render, segment, infer, results = docked.values()
    # the channels at the chosen pixel size (the render widget re-renders both together)
    render.pixel_size.value = args.pixel_size
    render.render()
    segment.segment()
    infer.grid.value = args.grid
    infer.method.value = args.method
    infer.device.value = args.device
    if args.iterations is not None:
        infer.iterations.value = args.iterations
    infer.ensemble.value = args.ensemble
    infer.run()
    print(f"inference done in {time.perf_counter() - started:.0f} s: {infer.status.value}")

    base = infer.image.value.metadata.get("base")
    rate = viewer.layers[f"{base} rate"]
    outline = viewer.layers[f"{base} outline"]
    uncertainty = viewer.layers[f"{base} rate uncertainty"]
    # side by side: [rate + outline] | [uncertainty + outline]; the inputs stay in the layer
    # list, hidden, below the grid's two cells
    for layer in viewer.layers:
        layer.visible = False
    outline_copy = viewer.add_shapes(outline.data, shape_type="polygon", edge_color="white",
                                     face_color="transparent", edge_width=outline.edge_width[0],
                                     scale=outline.scale, translate=outline.translate,
                                     units=outline.units, opacity=outline.opacity,
                                     name=f"{base} outline ")
    order = [rate, outline, uncertainty, outline_copy]  # bottom to top: the top group goes right
    for layer in order:
        viewer.layers.move(viewer.layers.index(layer), len(viewer.layers))  # to the top
        layer.visible = True
    uncertainty.colorbar.position = "top_right"  # each colorbar at the top right of its cell
    viewer.grid.enabled = True
    viewer.grid.stride = 2
    viewer.grid.shape = (1, -1)
    viewer.layers.selection.active = rate
    split_r = rate.metadata["chromflow_result"].diagnostics.get("split_half_r", float("nan"))
    viewer.canvas.overlays.text.text = (f"left: lambda = Gamma_me / Gamma_ac   right: its standard error   "
                                        f"(split-half r {split_r:.2f})")
    window.resize(1920, 1080)
    viewer.reset_view()
    for _ in range(30):
        QApplication.processEvents()
        time.sleep(0.05)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image = window.screenshot(args.out, flash=False, canvas_only=False)
    print(f"wrote {args.out}: {image.shape[1]}x{image.shape[0]}")
    viewer.close()


if __name__ == "__main__":
    main()
