"""The explorer's views, one module each; every view is fed by the page's periodic callback."""
from .compare import CompareView
from .energy import EnergyView
from .nudge import NudgeView
from .output import OutputView
from .residual import ResidualView
from .trajectories import TrajectoriesView
from .verdict import VerdictView

# Order of construction (and of ``ExplorerApp.views``).
VIEW_CLASSES = (TrajectoriesView, EnergyView, ResidualView, NudgeView, OutputView, VerdictView, CompareView)

__all__ = ["VIEW_CLASSES", "CompareView", "EnergyView", "NudgeView", "OutputView", "ResidualView", "TrajectoriesView",
           "VerdictView"]
