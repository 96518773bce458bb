"""Run once by ``panel serve app.py --setup explorer/app/warm.py`` before the server takes its first
page: the imports (torch, the engine, the app) and the shipped sample images, which otherwise made
the first visitor's page take about twice as long as the next ones (16 s against 7 s here)."""
import explorer.app.main  # noqa: F401  (imported for its side effect: modules loaded once per process)
from explorer.app.state import load_app_samples

load_app_samples()
