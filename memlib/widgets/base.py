"""The :class:`Explorer`: controls → compute → (message, text, figure), testable without a browser."""
from __future__ import annotations

import html
import struct
import zlib
from typing import Callable, Mapping

import numpy as np

#: CSS pixels per inch of figure on screen, and how many rendered pixels per CSS pixel
#: (1.5: sharp on high-density screens, and rendering costs little more: text dominates).
CSS_PX_PER_INCH = 96
RENDER_SCALE = 1.5


def png_bytes(rgba) -> bytes:
    """An RGBA pixel buffer (height × width × 4, e.g. ``canvas.buffer_rgba()``) as a PNG:
    rows unfiltered, zlib level 1.  A figure is mostly flat colour, so this is as small as
    an adaptively filtered PNG (within ~5 %) and encodes in about half the time."""
    a = np.asarray(rgba)
    h, w, _ = a.shape
    raw = np.empty((h, 4 * w + 1), np.uint8)
    raw[:, 0] = 0                                   # filter type 0 (None) on every row
    raw[:, 1:] = a.reshape(h, 4 * w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + chunk(b"IEND", b""))


def _reuse_ticks(axis, keep: int = 400):
    """Let ``axis`` reuse the Tick objects that ``ax.clear()`` (or a new scale) discards.

    Making a Tick (two tick lines, a grid line, two labels) is the costliest part of
    redrawing a cleared axes, the more so on a log axis with its minor ticks.  Matplotlib
    makes the first tick of a cleared axis from its defaults and every further one by
    copying the first tick's properties onto a new Tick (``Axis.get_major_ticks``); here
    those further ones are old Ticks instead, which receive the same copy, so they look
    the same.  The first tick is an old Tick too, given the properties of a pristine one
    made once, at the first clear (before any plot function changed a default), and kept
    aside."""
    pools = {True: [], False: []}
    pristine: dict = {}
    make, reset = axis._get_tick, axis.reset_ticks

    def reset_ticks():
        for major, name in ((True, "majorTicks"), (False, "minorTicks")):
            ticks = axis.__dict__.get(name)         # a list once made; the lazy default otherwise
            if isinstance(ticks, list):
                pools[major].extend(ticks[:keep - len(pools[major])])
        reset()

    def get_tick(major):
        made = axis.__dict__.get("majorTicks" if major else "minorTicks")
        if pools[major] and made:                   # a further tick: get_*_ticks copies the first onto it
            return pools[major].pop()
        if pools[major] and major in pristine:      # the first tick after a clear
            tick = pools[major].pop()
            axis._copy_tick_props(pristine[major], tick)
            return tick
        if not made and major not in pristine and pools[major]:
            pristine[major] = make(major)           # the defaults, kept aside, never drawn
        return make(major)

    axis.reset_ticks, axis._get_tick = reset_ticks, get_tick


class _TextPixels:
    """Paste a text drawn before, pixel for pixel, when it comes back at the same place.

    Installed on an explorer canvas's Agg renderer: ``draw_text`` keys each string on what its
    pixels depend on (the string, its font, size, angle, colour, alpha, and its exact position,
    fraction of a pixel included) and keeps the pixels it rendered, drawn alone on a
    transparent scratch canvas.  Tick labels, axis labels and titles mostly stay put between
    updates, and setting their glyphs again is a large share of a redraw.  A clipped text,
    and anything else unusual, is drawn as usual."""

    def __init__(self, renderer, keep: int = 2000):
        from matplotlib.backends.backend_agg import RendererAgg
        self.renderer, self.keep = renderer, keep
        self.draw_text = renderer.draw_text                     # matplotlib's own
        self.scratch = RendererAgg(int(renderer.width), int(renderer.height), renderer.dpi)
        self.pixels = np.asarray(self.scratch.buffer_rgba())
        self.blank = self.pixels[0, 0].copy()                   # the scratch canvas' empty pixel
        self.saved: dict = {}
        renderer.draw_text = self.paste_or_draw

    def paste_or_draw(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
        r = self.renderer
        plain = (ismath != "TeX" and gc.get_clip_rectangle() is None and gc.get_clip_path()[0] is None
                 and not gc.get_hatch() and gc.get_sketch_params() is None)
        if not plain:
            return self.draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)
        extra = repr((mtext.get_fontfeatures(), mtext.get_language())) if mtext is not None else None
        font = (tuple(prop.get_family()), prop.get_slant(), prop.get_variant(), prop.get_weight(),
                prop.get_stretch(), prop.get_size_in_points(), prop.get_file(), prop.get_math_fontfamily())
        key = (s, ismath, font, angle, tuple(gc.get_rgb()), gc.get_alpha(),
               gc.get_forced_alpha(), gc.get_antialiased(), x, y, r.dpi, extra)
        got = self.saved.get(key)
        if got is None:
            got = self.saved[key] = self._render(key, gc, x, y, s, prop, angle, ismath, mtext)
            if len(self.saved) > self.keep:
                self.saved.pop(next(iter(self.saved)))
        if got is not None:
            rgba, left, bottom = got
            paste = r.new_gc()                  # the pixels carry the text's alpha already
            r.draw_image(paste, left, bottom, rgba)
            paste.restore()

    def _render(self, key, gc, x, y, s, prop, angle, ismath, mtext):
        """The text's pixels drawn alone (rows bottom first, as ``draw_image`` takes them) and
        where they go, or None for an empty string."""
        import math
        w, h, d = self.renderer.get_text_width_height_descent(s, prop, ismath)
        if not s or w <= 0:
            return None
        # the rotated box of the text around its origin (x, y; y downwards), with room for
        # antialiasing and glyphs that overhang their advance
        pad = 4 + prop.get_size_in_points() * self.renderer.dpi / 72 * 0.5
        c, sn = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        xs, ys = [], []
        for u, v in ((0, -d), (w, -d), (w, h - d), (0, h - d)):
            xs.append(x + u * c - v * sn)
            ys.append(y - (u * sn + v * c))
        H, W = self.pixels.shape[:2]
        x0, x1 = max(int(min(xs) - pad), 0), min(int(max(xs) + pad) + 1, W)
        y0, y1 = max(int(min(ys) - pad), 0), min(int(max(ys) + pad) + 1, H)
        if x1 <= x0 or y1 <= y0:
            return None
        self.draw_text.__func__(self.scratch, gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)
        crop = self.pixels[y0:y1, x0:x1]
        rgba = np.ascontiguousarray(crop[::-1])
        crop[...] = self.blank                                   # the scratch canvas empty again
        return rgba, x0, H - y1


class _LegendPixels:
    """Draw a figure whose legends are pasted as pixels when they are the same as one drawn
    before (the last few kept): same entries (texts, their colours and sizes, the handles' colours, hatches,
    lines and markers), same settings, same place (a legend placed by ``loc="best"`` moves with
    the data and is always drawn).  A legend's many texts and boxes are a large share of an
    explorer's redraw, and most updates (a new context length, a new batch) leave it alone.

    A legend is captured by drawing it alone on a transparent canvas of the figure's size;
    pasted, it is composited over what lies beneath, as it would have been drawn."""

    _HANDLE_PROPS = ("get_facecolor", "get_edgecolor", "get_hatch", "get_linewidth", "get_linestyle",
                     "get_color", "get_marker", "get_markersize", "get_markerfacecolor",
                     "get_markeredgecolor", "get_alpha", "get_visible", "get_hatch_linewidth")

    def __init__(self):
        self.saved: dict = {}           # key (which names the axes) -> (rgba, x, y)

    def _key(self, fig, leg):
        if leg._loc in (0, "best") or not leg.get_visible():
            return None

        def plain(v):
            if hasattr(v, "tolist"):
                v = v.tolist()
            return tuple(plain(x) for x in v) if isinstance(v, (list, tuple)) else v

        handles = []
        for h in leg.legend_handles:
            handles.append((type(h).__name__,) + tuple(
                plain(getattr(h, g)()) if hasattr(h, g) else None for g in self._HANDLE_PROPS))
        texts = tuple((t.get_text(), plain(t.get_color()), t.get_fontsize(), t.get_fontweight())
                      for t in leg.get_texts())
        settings = tuple(sorted((k, v) for k, v in vars(leg).items()
                                if isinstance(v, (int, float, str, bool, type(None))) and k != "stale"))
        anchor = leg.get_bbox_to_anchor()
        return (id(leg.axes), texts, tuple(handles), settings, leg.get_title().get_text(),
                tuple(round(v, 6) for v in anchor.bounds), tuple(round(float(v), 6) for v in leg.axes.bbox.bounds),
                tuple(fig.bbox.bounds), fig.dpi)

    def draw(self, fig):
        """``fig.canvas.draw()``, pasting each legend seen before, capturing the others."""
        renderer = fig.canvas.get_renderer()
        if getattr(self, "_texts", None) is None or self._texts.renderer is not renderer:
            self._texts = _TextPixels(renderer)
        for ax in fig.axes:
            leg = ax.get_legend()
            if leg is None:
                continue
            key = self._key(fig, leg)
            if key in self.saved:
                leg.draw = self._paster(*self.saved[key])
            elif key is not None:
                leg.draw = self._capturer(leg, key)
        fig.canvas.draw()

    def _capturer(self, leg, key):
        """A legend's draw that draws it alone on a transparent canvas, keeps those pixels
        under ``key`` and pastes them: one drawing of the legend, kept for the next time."""
        from matplotlib.backends.backend_agg import RendererAgg

        def draw(renderer):
            w, h = int(renderer.width), int(renderer.height)
            r = RendererAgg(w, h, renderer.dpi)
            type(leg).draw(leg, r)
            box = leg.get_window_extent(r)
            x0, y0 = max(int(box.x0) - 3, 0), max(int(box.y0) - 3, 0)
            x1, y1 = min(int(box.x1) + 4, w), min(int(box.y1) + 4, h)
            if x1 <= x0 or y1 <= y0:
                return
            # rows bottom first, as draw_image takes them
            rgba = np.ascontiguousarray(np.asarray(r.buffer_rgba())[h - y1:h - y0, x0:x1][::-1])
            if len(self.saved) >= 8:
                self.saved.pop(next(iter(self.saved)))
            self.saved[key] = (rgba, x0, y0)
            self._paster(rgba, x0, y0)(renderer)
        return draw

    @staticmethod
    def _paster(rgba, x, y):
        def draw(renderer):
            gc = renderer.new_gc()
            renderer.draw_image(gc, x, y, rgba)
            gc.restore()
        return draw


class Explorer:
    """Wire ipywidgets ``controls`` to a pure ``compute`` and a ``plot(result, ax)``.

    Args:
        compute: ``compute(**values) -> result``; a ``ValueError`` becomes a message.
        controls: ``name -> ipywidget``; each control's ``value`` is passed as ``name``.
        plot: ``plot(result, ax)`` draws the result; None for a text-only explorer.
        describe: ``describe(result) -> str`` (plain text shown above the figure);
            defaults to ``result.table()`` when the result has one.
        figsize: size of the explorer's one figure, redrawn in place on every change.

    Attributes: ``result`` (latest result or None), ``error`` (message or None),
    ``widget`` (the ipywidgets box to display).

    The text and the figure are shown through widget *state* (an HTML ``<pre>`` and a
    PNG ``Image``), not by printing into ``Output`` widgets: printed output also travels
    on the cell's output channel, so a notebook cell that drives an explorer with
    ``ex.set(...)`` would record it, and nbval would compare it.  State updates travel as
    comm messages, which nbval ignores.
    """

    def __init__(self, compute: Callable, controls: Mapping, plot: Callable | None = None,
                 describe: Callable | None = None, figsize=(7, 3.6), title: str = ""):
        import ipywidgets as w

        self.compute, self.plot_fn, self.describe = compute, plot, describe
        self.controls = dict(controls)
        self.result = None
        self.error: str | None = None
        self.message = w.HTML()
        self.message.add_class("memlib-explorer-message")   # hooks for the browser test
        self.text = w.HTML()
        self.image = w.Image(format="png")
        self.fig = self.ax = None
        self._layout_key = None
        self._layouts: dict = {}       # layout signature -> the axes' positions it gave
        self._legends = _LegendPixels()
        if plot is not None:
            # a Figure of its own (no pyplot state), drawn by Agg at the size it is shown:
            # the image's CSS width is the figure's, so the browser never stretches it
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            self.fig = Figure(figsize=figsize, dpi=CSS_PX_PER_INCH * RENDER_SCALE, layout="constrained")
            FigureCanvasAgg(self.fig)
            self.ax = self.fig.add_subplot()
            for axis in (self.ax.xaxis, self.ax.yaxis):
                if hasattr(axis, "_get_tick") and hasattr(axis, "_copy_tick_props"):   # matplotlib internals
                    _reuse_ticks(axis)
            self.image.layout = w.Layout(width=f"{round(figsize[0] * CSS_PX_PER_INCH)}px", max_width="100%",
                                         height="auto")
        for c in self.controls.values():
            c.observe(lambda change: self.update(), names="value")
        header = [w.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        self.widget = w.VBox(header + [w.HBox(list(self.controls.values()),
                                               layout=w.Layout(flex_flow="row wrap")),
                                        self.message, self.text, self.image])
        self.widget.add_class("memlib-explorer")
        self.title = title
        self.update()

    @property
    def values(self) -> dict:
        return {k: c.value for k, c in self.controls.items()}

    def set(self, **values):
        """Set several controls, then recompute once; returns ``self.result``."""
        self._assign(values)
        return self.update()

    def _assign(self, values: dict):
        """Give several controls their values without recomputing after each one."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise ValueError(f"unknown control(s) {sorted(unknown)}; controls: {sorted(self.controls)}")
        self._hold = True
        try:
            for k, v in values.items():
                self.controls[k].value = v
        finally:
            self._hold = False

    _hold = False

    def update(self):
        """Recompute from the controls and redraw.  Any failure, of the compute or of the plot,
        shows a one-line message naming the control, and no stale result stays on screen."""
        if self._hold:
            return self.result
        try:
            result = self.compute(**self.values)
            text = self.describe(result) if self.describe else getattr(result, "table", lambda: str(result))()
            png = self._draw(result) if self.plot_fn is not None else None
        except Exception as e:          # noqa: BLE001 - an explorer never shows a traceback
            self._show_error(e)
            return None
        self.result, self.error = result, None
        self.message.value = ""
        self.text.value = f"<pre style='line-height:1.25'>{html.escape(text)}</pre>"
        if png is not None:
            self.image.value = png
            self.image.layout.display = None
        return result

    def _draw(self, result) -> bytes:
        """Plot ``result`` and return the PNG.  The layout (margins that fit every label) is
        computed with constrained layout only when what decides it changes (the shape of the
        titles and axis labels, the widest tick label, the legend); otherwise the margins are
        kept (or those of an earlier state with the same signature are put back), which saves
        most of the drawing time.  A new layout costs one draw, not two: the draw that
        computes it also renders the figure.  Texts and legends that come back unchanged at
        the same place are pasted from the pixels of their first draw (:class:`_TextPixels`,
        :class:`_LegendPixels`), and the axes reuse their Tick objects (:func:`_reuse_ticks`)."""
        self.ax.clear()
        self.plot_fn(result, self.ax)
        if self._fast:
            try:
                return self._draw_fast()
            except (AttributeError, TypeError, ImportError):
                # matplotlib's private helpers this relies on changed (a newer release than the
                # pinned one): draw plainly from now on, with matplotlib's own text drawing
                self._fast = False
                texts = getattr(self._legends, "_texts", None)
                if texts is not None:
                    texts.renderer.draw_text = texts.draw_text
                for ax in self.fig.axes:
                    leg = ax.get_legend()
                    if leg is not None:
                        leg.__dict__.pop("draw", None)
        self.fig.set_layout_engine("constrained")
        self.fig.canvas.draw()
        return png_bytes(self.fig.canvas.buffer_rgba())

    _fast = True

    def _draw_fast(self) -> bytes:
        """:meth:`_draw` past the plot: the layout kept or put back, texts and legends pasted."""
        key = self._layout_signature()
        if key == self._layout_key or not all(ax.get_in_layout() for ax in self.fig.axes):
            # the same layout as now, or margins the plot function fixed itself
            self._legends.draw(self.fig)
        elif key in self._layouts:                  # a layout seen before: put the axes back
            for ax, pos in zip(self.fig.axes, self._layouts[key]):
                ax._set_position(pos)
            self._layout_key = key
            self._legends.draw(self.fig)
        else:
            self.fig.set_layout_engine("constrained")
            self.fig.canvas.draw()
            self.fig.set_layout_engine("none")
            self._layout_key = key
            if len(self._layouts) >= 64:
                self._layouts.clear()
            self._layouts[key] = [ax.get_position(original=True) for ax in self.fig.axes]
        return png_bytes(self.fig.canvas.buffer_rgba())

    def _layout_signature(self):
        """What the margins depend on: the shape of every axes' titles and axis labels (lines,
        size, rotation, and their extent only where it nearly fills the axes: words that fit
        move no margin), its widest tick label, the legend's entries, and the figure's texts."""
        renderer = self.fig.canvas.get_renderer()

        def ticks_shape(axis):
            """The widest tick label drawn (pixels) and its lines, how far the labels stick out
            past the ends of the axis (pixels; 0 for labels well inside), and their rotation."""
            from matplotlib.text import _get_text_metrics_with_cache
            lo, hi = sorted(axis.get_view_interval())
            tol = 1e-9 * max(abs(lo), abs(hi), 1e-300)
            tr = axis.get_transform()
            t_lo, t_hi = sorted(tr.transform([lo, hi]))
            bbox = axis.axes.bbox
            horizontal = axis.axis_name == "x"
            length = bbox.width if horizontal else bbox.height
            w = lines = left = right = 0.0
            turns = set()
            for locs, fmt, ticks in ((axis.get_majorticklocs(), axis.get_major_formatter(), axis.get_major_ticks),
                                     (axis.get_minorticklocs(), axis.get_minor_formatter(), axis.get_minor_ticks)):
                labels = fmt.format_ticks(locs)          # as the axis does: all, then those in view
                shown = [(x, t) for x, t in zip(locs, labels) if t and lo - tol <= x <= hi + tol]
                if not shown:
                    continue
                label = ticks(1)[0].label1                # the font every tick label of the axis uses
                prop = label.get_fontproperties()
                turns.add(label.get_rotation())
                turned = horizontal and label.get_rotation() != 0
                for x, t in shown:
                    tw = th = 0.0
                    for line in t.split("\n"):
                        line, ismath = label._preprocess_math(line)
                        lw, lh, _ = _get_text_metrics_with_cache(renderer, line, prop, ismath, self.fig.dpi)
                        tw, th = max(tw, lw), th + lh
                    w, lines = max(w, tw), max(lines, t.count("\n") + 1)
                    along = (tw if not turned else tw + th) if horizontal else th
                    at = (tr.transform([x])[0] - t_lo) / ((t_hi - t_lo) or 1) * length
                    left, right = max(left, along / 2 - at), max(right, along / 2 - (length - at))
            return (round(w), lines, round(left) if left > 0 else 0, round(right) if right > 0 else 0,
                    tuple(sorted(turns)))

        def shape(text, room):
            s = text.get_text()
            if not s or not text.get_visible():
                return None
            ext = text.get_window_extent(renderer)
            along = max(ext.width, ext.height)
            return (s.count("\n"), text.get_fontsize(), text.get_rotation(),
                    round(along) if along > 0.9 * room else None)

        parts = []
        for ax in self.fig.axes:
            legend = ax.get_legend()
            w, h = ax.bbox.width, ax.bbox.height
            parts.append((shape(ax.title, w), shape(ax._left_title, w), shape(ax._right_title, w),
                          shape(ax.xaxis.label, w), shape(ax.yaxis.label, h),
                          ticks_shape(ax.xaxis), ticks_shape(ax.yaxis),
                          tuple(t.get_text() for t in legend.get_texts()) if legend else ()))
        parts.append(tuple(t.get_text() for t in self.fig.texts))
        return tuple(parts)

    def _show_error(self, e: Exception):
        """Clear the result and say what is wrong, naming the control the reader sees."""
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, ValueError):
            msg = f"could not compute this combination ({type(e).__name__}: {msg})"
        for name, control in self.controls.items():
            label = getattr(control, "description", "") or name
            if msg.startswith(f"{name}:") and label != name:
                msg = f"{label} ({msg})"
                break
        self.result, self.error = None, msg
        self.message.value = f"<span style='color:#b00020'>⚠ {html.escape(msg)}</span>"
        self.text.value = ""
        self.image.layout.display = "none"

    def _repr_mimebundle_(self, include=None, exclude=None):
        """The live widget, with a static stand-in for renderers that have no kernel.

        JupyterLab draws the widget view; GitHub, nbconvert and a notebook opened before it
        runs (``make notebooks`` drops the view, whose model is gone once the kernel stops)
        show the figure as ``image/png`` (as it was when displayed) and a one-line
        ``text/plain`` note instead of the widget's repr.
        """
        import base64
        bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude)
        name = f"explorer “{self.title}”" if self.title else "explorer"
        note = (f"[Interactive {name}: run the notebook in Jupyter for its controls"
                + ("; the picture shows it as it was displayed.]" if self.fig else ".]"))
        if self.error:
            note += f"\n⚠ {self.error}"
        bundle["text/plain"] = note
        if self.fig is not None and self.error is None and self.image.value:
            bundle["image/png"] = base64.b64encode(self.image.value).decode("ascii")
        return bundle


def model_dropdown(model, description: str = "model"):
    """A catalog dropdown with ``model`` selected; a dict, a path or an unknown name is offered
    as-is at the top (an invalid one then shows as the explorer's message)."""
    import ipywidgets as w

    from ..catalog import catalog_names
    names = catalog_names()
    options = [(n, n) for n in names]
    if not (isinstance(model, str) and model in names):
        label = model if isinstance(model, str) else str(
            (model.get("_name_or_path") if isinstance(model, dict) else None) or "custom config")
        options = [(label, model)] + options
    return w.Dropdown(options=options, value=model, description=description)
