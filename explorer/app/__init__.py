"""The live dynamics explorer (``panel serve app.py``).

``state`` holds the settings (a param class, no Panel), ``worker`` the compute
thread (no Bokeh), ``views`` the plots, ``main`` the page that joins them.
"""
from .main import ExplorerApp, create_app
from .state import ExplorerState, SettingError

__all__ = ["ExplorerApp", "ExplorerState", "SettingError", "create_app"]
