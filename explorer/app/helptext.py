"""Help beside the widgets that have none of their own.

Panel 1.9 shows a widget's ``description`` as a "?" tooltip beside its name, but its sliders and
checkboxes have no ``description``: each of those gets a :class:`panel.widgets.TooltipIcon` beside
it, carrying its setting's doc.
"""
from __future__ import annotations

import panel as pn

ICON_WIDTH = 22


def with_help_icons(layouts, docs: dict[str, str]) -> dict[str, pn.widgets.TooltipIcon]:
    """Put a "?" icon beside every widget in ``layouts`` named in ``docs`` (label -> help) that cannot
    show help itself; returns the icons by widget label (a caller may change an icon's text later)."""
    icons: dict[str, pn.widgets.TooltipIcon] = {}
    for layout in layouts:
        for parent in layout.select(pn.layout.ListPanel):
            for i, widget in enumerate(list(parent.objects)):
                if not isinstance(widget, pn.widgets.Widget) or isinstance(widget, pn.widgets.TooltipIcon):
                    continue
                if widget.name not in docs or "description" in widget.param or widget.name in icons:
                    continue
                icon = pn.widgets.TooltipIcon(value=docs[widget.name], width=ICON_WIDTH, align="center",
                                              margin=(0, 4, 0, 0), css_classes=["help-icon"])
                # The widget takes the row's width less the icon's (Panel's default 300 px ran past
                # the sidebar's edge and cut the icon off).
                widget.param.update(width=None, sizing_mode="stretch_width")
                parent[i] = pn.Row(widget, icon, sizing_mode="stretch_width", margin=0)
                icons[widget.name] = icon
    return icons
