"""The live dynamics explorer.

    panel serve app.py --setup explorer/app/warm.py --check-unused-sessions 1000 --unused-session-lifetime 10000

or ``python app.py``, which serves /app on port 5006 (``EXPLORER_PORT``) with
those settings. Every browser tab gets its own settings and worker thread.
A tab's worker stops about 2 s after its page loses its connection (the app
watches the session's connections), whatever the flags. The flags make Bokeh
free a closed tab's session within about 11 s instead of 15-30 s; a lifetime
much shorter than 10 s would discard the sessions of pages that are slow to
connect (on a busy machine a page can take several seconds to load).
Settings can be given in the address, e.g.
``/app?beta=0.3&schedule=descent_safe&speed=max``.
"""
import os

import panel as pn

from explorer.app import create_app
from explorer.app.main import app_css
from explorer.app.transport import one_recompute

pn.extension(notifications=True, raw_css=[app_css()])
TITLE = "Hopfield-ResNet explorer"


def page():
    query = {k: v[0].decode("utf-8", "replace") for k, v in (pn.state.session_args or {}).items() if v}
    app = create_app(settings=query)
    app.prefill()          # the page opens with the first frames drawn
    app.attach_session()
    return app.template()


def serve_page():
    """The page into this session's document, its models worked out once (a page appears seconds sooner)."""
    with one_recompute(pn.state.curdoc):
        page().servable(title=TITLE)


if __name__ == "__main__":
    port = int(os.environ.get("EXPLORER_PORT", "5006"))
    pn.serve({"app": serve_page}, port=port, address="127.0.0.1", show=False, title=TITLE,
             check_unused_sessions_milliseconds=1000, unused_session_lifetime_milliseconds=10000)
else:
    serve_page()
