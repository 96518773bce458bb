"""The run and training settings, each defined once (bounds, default, doc); no Panel here.

:class:`RunSettings` holds what one relaxation needs (the Relaxation tab's
``ExplorerState`` inherits it; ``python -m explorer relax`` takes its options
from it); :class:`TrainSettings` holds every setting of a training run
(``python -m explorer train``'s options, ``TrainConfig``'s fields, the Train
tab's controls and a checkpoint's ``settings``). Both share the EP settings of
:class:`EPSettings`.

Everything else is derived from a schema by the helpers here:

- :func:`add_arguments` / :func:`from_args`: argparse options (help from the
  doc, the default, the allowed values) and their values, checked;
- :func:`parse_query`: settings typed as text (a page's URL query), each
  problem naming the setting, the value and what is allowed;
- :func:`to_dict` / :func:`from_dict`: plain values (JSON) and back, checked;
- :func:`check`: one value against its parameter, a ValueError naming it.
"""
from __future__ import annotations

import argparse
import math

import param

from .data import DATASETS
from .dynamics import SCHEDULES
from .ep import VARIANTS

SPEEDS = [2, 5, 10, 20, 50, 100, 200, 500, 1000, "max"]  # relaxation steps per second (playback)
BUILDERS = ("resnet", "plain", "resnet13")
TRAINERS = ("ep", "bp")
OPTIMIZERS = ("sgd", "adam")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
NONE = ("none", "all")   # an optional count left out ("--limit all")


class Settings(param.Parameterized):
    """A schema: its parameters are the settings; see the module doc for the helpers."""

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Settings":
        return cls(**from_dict(cls, values))


class EPSettings(Settings):
    """The network and EP settings a relaxation and a training run share."""

    depth = param.Integer(default=5, bounds=(1, 25), precedence=0.11,
                          doc="Hidden convolutional layers on the main path (the paper's depth range: 1 to 25).")
    # No softbounds on alpha and beta: Panel (1.9) takes an exclusive hard bound to apply to the
    # soft bound too, and snaps a slider moved to its end back without a word; the app's slider
    # ranges are app.state.SLIDER_RANGES instead.
    alpha = param.Number(default=6.0, bounds=(0.0, 50.0), inclusive_bounds=(False, True), step=0.1,
                         precedence=0.20,
                         doc="Clipping threshold alpha of the activation min(max(u, 0), alpha) "
                             "(6: the paper's ReLU6; 1: the hard sigmoid).")
    beta = param.Number(default=0.15, bounds=(0.0, 2.0), inclusive_bounds=(False, False), step=0.01,
                        precedence=0.21, doc="Nudging strength beta of the nudged phases (+beta and -beta).")
    t_free = param.Integer(default=120, bounds=(1, 1000), softbounds=(5, 400), precedence=0.22, label="T free",
                           doc="Iterations of the free phase.")
    t_nudge = param.Integer(default=50, bounds=(1, 1000), softbounds=(5, 200), precedence=0.23, label="T nudge",
                            doc="Iterations of each nudged phase.")
    schedule = param.Selector(default="paper", objects=list(SCHEDULES), precedence=0.24,
                              doc="Layer update order: 'paper' (odd layers then even: a Jacobi step "
                                  "between skip-coupled layers), 'descent_safe' (never two coupled "
                                  "layers at once) or 'synchronous'.")


class RunSettings(EPSettings):
    """What one relaxation needs besides the model and the input (those stay with the app)."""

    depth = param.Integer(doc="Hidden convolutional layers on the main path (untrained builders only; "
                              "a checkpoint's depth is fixed).")
    residual = param.Boolean(default=True, precedence=0.12,
                             doc="Residual (skip) edges into every even layer (untrained builders only).")
    tol = param.Number(default=1e-4, bounds=(0.0, 1.0), inclusive_bounds=(False, False), step=1e-5,
                       precedence=0.25, label="Tolerance",
                       doc="Relative-step tolerance: a phase has converged once its largest relative step "
                           "||s_t - s_(t-1)|| / ||s_t|| falls below this.")
    stop_at_tol = param.Boolean(default=False, precedence=0.26, label="Stop at tolerance",
                                doc="End each phase once it has converged (off: run every iteration).")
    speed = param.Selector(default=100, objects=SPEEDS, precedence=0.43, label="Speed (steps/s)",
                           doc="Playback: relaxation steps per second ('max': as fast as the machine runs).")


class TrainSettings(EPSettings):
    """Every setting of a training run; the defaults are the paper's recipe (MODEL.md).

    A checkpoint stores them all under ``settings``; ``None`` where a default depends on other
    settings (the trainer's optimiser, learning rate, batch-norm) or means "all" / "off".
    """

    # data
    dataset = param.Selector(default="fashion_mnist", objects=list(DATASETS), doc="The image data set.")
    data_path = param.String(default=None, allow_None=True,
                             doc="Folder holding the data set (default: the usual places).")
    limit = param.Integer(default=None, allow_None=True, bounds=(1, None),
                          doc="Train on the first N training images only (default: all).")
    eval_limit = param.Integer(default=None, allow_None=True, bounds=(1, None),
                               doc="Per-epoch evaluation on the first N test images (default: all).")
    final_eval_limit = param.Integer(default=None, allow_None=True, bounds=(1, None),
                                     doc="The card's evaluation on the first N test images (default: all).")
    normalize = param.Boolean(default=True, doc="Normalise images by the data set's mean and std.")
    flip = param.Boolean(default=False, doc="Random horizontal flips while training.")
    crop_padding = param.Integer(default=0, bounds=(0, 64), doc="Random crops after padding by this many pixels.")
    randaugment = param.List(default=None, allow_None=True, item_type=int, bounds=(2, 2),
                             doc="RandAugment [num_ops, magnitude], e.g. 3 9 (default: off).")
    # network
    builder = param.Selector(default="resnet", objects=list(BUILDERS),
                             doc="resnet: residual family; plain: without skips; resnet13: the paper's network.")
    width = param.Integer(default=8, bounds=(1, 1024), doc="Channels of the first two hidden layers.")
    classes = param.Integer(default=None, allow_None=True, bounds=(2, None),
                            doc="Output units (default: the data set's class count).")
    cost = param.Selector(default="mse", objects=["mse", "cross_entropy"], doc="The cost C of the output.")
    gains = param.Number(default=None, allow_None=True, bounds=(0.0, None), inclusive_bounds=(False, True),
                         doc="Weight-init gain of every edge (default: the builder's 0.7).")
    seed = param.Integer(default=0, bounds=(0, None), doc="Seed of the weights and of the shuffling order.")
    # learning rule
    trainer = param.Selector(default="ep", objects=list(TRAINERS), doc="ep, or bp (the feed-forward baseline).")
    variant = param.Selector(default="centered", objects=list(VARIANTS),
                             doc="centered (+beta and -beta) or one_sided EP estimate.")
    tol = param.Number(default=None, allow_None=True, bounds=(0.0, 1.0), inclusive_bounds=(True, False),
                       step=1e-4, label="Tolerance",
                       doc="Stop each phase once the largest relative step ||s_t - s_(t-1)|| / ||s_t|| falls "
                           "below this (default: off, 0 too: every phase runs T free / T nudge iterations).")
    eval_t_free = param.Integer(default=None, allow_None=True, bounds=(1, 10_000),
                                doc="Free-phase iterations at evaluation (default: T free).")
    eval_tol = param.Number(default=None, allow_None=True, bounds=(0.0, 1.0), inclusive_bounds=(True, False),
                            doc="Tolerance at evaluation (default: tol; 0: off).")
    warm_start = param.Boolean(default=True, doc="Start each batch's free phase from the previous batch's "
                                                 "fixed point.")
    batch_norm = param.Boolean(default=None, allow_None=True, doc="bp only (default: on for bp).")
    # optimisation
    epochs = param.Integer(default=10, bounds=(1, 100_000), doc="Passes over the training images.")
    batch_size = param.Integer(default=128, bounds=(1, 65_536), label="Batch size",
                               doc="Images per training batch.")
    eval_batch_size = param.Integer(default=256, bounds=(1, 65_536), doc="Images per evaluation batch.")
    optimizer = param.Selector(default=None, allow_None=True, objects=list(OPTIMIZERS),
                               doc="sgd or adam (default: sgd for ep, adam for bp).")
    lr = param.Number(default=None, allow_None=True, bounds=(0.0, 10.0), inclusive_bounds=(False, True),
                      step=0.005, label="Learning rate",
                      doc="Learning rate at the start (default: 0.03 for sgd, 1e-3 for adam).")
    lr_min = param.Number(default=2e-6, bounds=(0.0, 10.0), doc="Learning rate at the end of the cosine.")
    lr_schedule = param.Selector(default="cosine", objects=["cosine", "constant"], doc="cosine or constant.")
    lr_step = param.Selector(default="epoch", objects=["epoch", "batch"],
                             doc="Cosine step per epoch (the paper) or per batch (smooth, for short runs).")
    momentum = param.Number(default=0.9, bounds=(0.0, 1.0), inclusive_bounds=(True, False), doc="SGD momentum.")
    nesterov = param.Boolean(default=True, doc="Nesterov momentum (SGD).")
    weight_decay = param.Number(default=3.5e-4, bounds=(0.0, 1.0), doc="Weight decay.")
    clip = param.Number(default=1.0, bounds=(0.0, None), doc="Global gradient-norm bound (0: off).")
    # running
    out = param.String(default=None, allow_None=True,
                       doc="Checkpoint stem: writes OUT.json, OUT.safetensors, OUT.metrics.jsonl.")
    save_every = param.Integer(default=0, bounds=(0, None), doc="Also checkpoint every N batches (0: never).")
    log_every = param.Integer(default=50, bounds=(0, None), doc="A JSONL batch line every N batches (0: none).")
    threads = param.Integer(default=1, bounds=(0, None), doc="torch CPU threads (0: torch's default).")
    device = param.String(default="auto", doc="auto (cuda when present, else cpu), cpu, cuda, cuda:1 ...")
    amp = param.Boolean(default=False, doc="bf16 autocast.")
    progress = param.Boolean(default=True, doc="Show a progress bar.")


# The command line's option groups of ``train``.
TRAIN_GROUPS = {
    "data": ("dataset", "data_path", "limit", "eval_limit", "final_eval_limit", "normalize", "flip",
             "crop_padding", "randaugment"),
    "network": ("builder", "depth", "width", "classes", "alpha", "cost", "gains", "seed"),
    "learning rule": ("trainer", "variant", "beta", "t_free", "t_nudge", "schedule", "tol", "eval_t_free",
                      "eval_tol", "warm_start", "batch_norm"),
    "optimisation": ("epochs", "batch_size", "eval_batch_size", "optimizer", "lr", "lr_min", "lr_schedule",
                     "lr_step", "momentum", "nesterov", "weight_decay", "clip"),
    "running": ("save_every", "log_every", "threads", "device", "amp", "progress"),
}


# ---------------------------------------------------------------------------
# One value
# ---------------------------------------------------------------------------

def names(schema) -> list[str]:
    """The settings of a schema (class or instance): its parameters less name and buttons."""
    return [n for n, p in schema.param.objects("existing").items()
            if n != "name" and not isinstance(p, (param.Event, param.Action))]


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def allowed(p: param.Parameter) -> str:
    """What a parameter takes, in words (for help texts and messages)."""
    if isinstance(p, param.Selector):
        return "one of " + ", ".join(str(o) for o in p.objects)
    if isinstance(p, param.Boolean):
        return "true or false"
    if isinstance(p, param.Number) and p.bounds is not None:
        lo, hi = p.bounds
        inc_lo, inc_hi = p.inclusive_bounds
        if lo is not None and hi is not None:
            ends = [f"{_num(v)} excluded" for v, inc in ((lo, inc_lo), (hi, inc_hi)) if not inc]
            ends = ["both ends excluded"] if len(ends) == 2 else ends
            return f"{_num(lo)} to {_num(hi)}" + (f" ({ends[0]})" if ends else "")
        if lo is not None:
            return f"{'above' if not inc_lo else 'at least'} {_num(lo)}"
        if hi is not None:
            return f"{'below' if not inc_hi else 'at most'} {_num(hi)}"
    if isinstance(p, param.List) and p.bounds is not None and p.bounds[0] == p.bounds[1]:
        return f"{p.bounds[0]} {getattr(p.item_type, '__name__', 'value')}s"
    return "a " + type(p).__name__.lower()


def _out_of_bounds(p: param.Number, v) -> bool:
    if p.bounds is None:
        return False
    (lo, hi), (inc_lo, inc_hi) = p.bounds, p.inclusive_bounds
    return ((lo is not None and (v < lo or (v == lo and not inc_lo)))
            or (hi is not None and (v > hi or (v == hi and not inc_hi))))


def check_param(p: param.Parameter, value):
    """``value`` if ``p`` takes it, else ValueError saying why (without the name)."""
    if value is None:
        if p.allow_None:
            return None
        raise ValueError(f"is not set; it must be {allowed(p)}")
    if isinstance(p, param.Boolean):
        if not isinstance(value, bool):
            raise ValueError("is not true or false")
    elif isinstance(p, param.Selector):
        if value not in list(p.objects):
            raise ValueError(f"is not {allowed(p)}")
    elif isinstance(p, param.Number):
        integer = isinstance(p, param.Integer)
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise ValueError(f"is not {'an integer' if integer else 'a number'}")
        if not math.isfinite(value):
            raise ValueError("is not a finite number")
        if _out_of_bounds(p, value):
            text = allowed(p)
            raise ValueError(f"is outside {text}" if " to " in text else f"is not {text}")
        value = int(value) if integer else float(value)
    elif isinstance(p, param.List):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"is not a list of {allowed(p)}")
        value = list(value)
        if p.item_type is not None and not all(isinstance(v, p.item_type) and not isinstance(v, bool)
                                               for v in value):
            raise ValueError(f"is not {allowed(p)}")
        lo, hi = p.bounds or (None, None)
        if (lo is not None and len(value) < lo) or (hi is not None and len(value) > hi):
            raise ValueError(f"is not {allowed(p)}")
    else:
        try:
            p._validate(value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"is not allowed: {exc}") from None
    return value


def from_text(p: param.Parameter, text):
    """A value typed as text (an option, a URL query) converted to the parameter's type (unchecked)."""
    if isinstance(text, (list, tuple)):               # nargs options: one text per item
        return from_text(p, " ".join(map(str, text))) if isinstance(p, param.List) else from_text(p, text[0])
    text = str(text).strip()
    if p.allow_None and text.lower() in NONE and not isinstance(p, param.String):
        return None
    if isinstance(p, param.Boolean):
        if text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        raise ValueError("is not true or false")
    if isinstance(p, param.Selector):
        by_text = {str(o): o for o in p.objects}
        if text not in by_text:
            raise ValueError(f"is not {allowed(p)}")
        return by_text[text]
    if isinstance(p, param.Integer):
        try:
            return int(text)
        except ValueError:
            raise ValueError("is not an integer") from None
    if isinstance(p, param.Number):
        try:
            return float(text)
        except ValueError:
            raise ValueError("is not a number") from None
    if isinstance(p, param.List):
        items = text.replace(",", " ").split()
        try:
            return [p.item_type(v) if p.item_type in (int, float) else v for v in items]
        except ValueError:
            raise ValueError(f"is not {allowed(p)}") from None
    return text


def check(schema, name: str, value):
    """``value`` of setting ``name`` checked against the schema, or ValueError naming both."""
    try:
        return check_param(schema.param[name], value)
    except ValueError as exc:
        raise ValueError(f"{name} = {_show(value)} {exc}") from None


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_show(v) for v in value)
    return _num(value) if not isinstance(value, str) else value


# ---------------------------------------------------------------------------
# Plain values (JSON, a checkpoint's settings) and text (a URL query)
# ---------------------------------------------------------------------------

def to_dict(obj, only=None) -> dict:
    """The settings of a Parameterized instance as plain values."""
    out = {}
    for n in names(obj) if only is None else only:
        v = getattr(obj, n)
        out[n] = list(v) if isinstance(v, tuple) else v
    return out


def from_dict(schema, values: dict, strict: bool = True) -> dict:
    """Plain values (e.g. from JSON) checked against a schema: a dict ready for ``schema(**d)``.

    Text where a number or choice belongs is converted; unknown names are refused (``strict``) or
    dropped; the first bad value raises a ValueError naming it and what is allowed.
    """
    known = names(schema)
    unknown = sorted(set(values) - set(known))
    if unknown and strict:
        raise ValueError(f"unknown settings {unknown}; known ones are {', '.join(known)}")
    out = {}
    for n, v in values.items():
        if n not in known:
            continue
        p = schema.param[n]
        if isinstance(v, str) and not isinstance(p, param.String):
            try:
                v = from_text(p, v)
            except ValueError as exc:
                raise ValueError(f"{n} = {v} {exc}") from None
        elif isinstance(p, param.Number) and not isinstance(p, param.Integer) and isinstance(v, int) \
                and not isinstance(v, bool):
            v = float(v)
        elif isinstance(p, param.Integer) and isinstance(v, float) and v.is_integer():
            v = int(v)                                  # JSON writers that print 5 as 5.0
        out[n] = check(schema, n, v)
    return out


def parse_query(target, given: dict[str, str], only=None) -> tuple[dict, list[str]]:
    """Settings typed as text (e.g. a page's URL query ``?beta=0.3&speed=max``).

    ``target``: a schema class, or an instance (its own choices, and its current values are what a
    bad value keeps). Returns (values, problems): each problem names the setting, the value typed
    and what is allowed, e.g. "beta = 1.5 is outside 0 to 1; kept 0.15"; the other values apply.
    """
    known = set(names(target) if only is None else only)
    values, problems = {}, []
    for name, text in given.items():
        if name not in known:
            problems.append(f"unknown setting {name!r} (known: {', '.join(sorted(known))})")
            continue
        p = target.param[name]
        try:
            values[name] = check_param(p, from_text(p, text))
        except ValueError as exc:
            kept = getattr(target, name) if isinstance(target, param.Parameterized) else p.default
            problems.append(f"{name} = {text} {exc}; kept {_show(kept)}")
    return values, problems


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------

def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser, schema, only=None, defaults: dict | None = None, help_defaults: dict | None = None):
    """One argparse option per setting of ``schema`` (``only`` these), its help from the doc.

    Options are absent from the namespace unless given (so a config file or a checkpoint can fill
    them); :func:`from_args` converts and checks them. ``defaults`` overrides a default for this
    command (shown in the help); ``help_defaults`` words a default instead. A boolean takes
    ``--flag``, ``--flag false`` and ``--no-flag``; a choice or number is checked by
    :func:`from_args`, so every bad value gives one line naming it.
    """
    defaults, help_defaults = defaults or {}, help_defaults or {}
    for name in names(schema) if only is None else only:
        p = schema.param[name]
        default = defaults.get(name, p.default)
        shown = help_defaults.get(name, "off" if default is None and isinstance(p, (param.Boolean, param.List))
                                  else default)
        doc = (p.doc or "").strip().rstrip(".")
        help_ = f"{doc}; {allowed(p)}" if isinstance(p, param.Number) and p.bounds else doc
        if isinstance(shown, bool):
            shown = "on" if shown else "off"
        if shown is not None and "(default" not in doc:
            help_ += f" (default: {_show(shown)})"
        help_ = help_.replace("%", "%%")
        flag = option(name)
        kw = dict(dest=name, default=argparse.SUPPRESS)
        if isinstance(p, param.Boolean):
            parser.add_argument(flag, nargs="?", const="true", metavar="BOOL", help=help_, **kw)
            parser.add_argument("--no-" + flag[2:], action="store_const", const="false", help=argparse.SUPPRESS,
                                **kw)
        elif isinstance(p, param.List) and p.bounds and p.bounds[0] == p.bounds[1]:
            parser.add_argument(flag, nargs=p.bounds[0], help=help_, **kw)
        elif isinstance(p, param.Selector):
            parser.add_argument(flag, metavar="{" + ",".join(str(o) for o in p.objects) + "}", help=help_, **kw)
        else:
            parser.add_argument(flag, help=help_, **kw)


def given(args, schema, only=None) -> dict:
    """The settings typed on the command line, converted (unchecked); ValueError naming a bad one."""
    out = {}
    for name in names(schema) if only is None else only:
        if name in vars(args):
            text = getattr(args, name)
            try:
                out[name] = from_text(schema.param[name], text)
            except ValueError as exc:
                raise ValueError(f"{option(name)} {_show(text)} {exc}") from None
    return out


def from_args(args, schema, only=None, defaults: dict | None = None, base: dict | None = None) -> dict:
    """Every setting of ``schema`` (``only`` these): its default (or ``defaults``), then ``base``
    (a config file, a checkpoint), then the options given, each checked (ValueError naming it).
    A default of None in ``defaults`` is taken as given ("not set")."""
    defaults = defaults or {}
    typed = given(args, schema, only)
    out = {}
    for name in names(schema) if only is None else only:
        if name in typed:
            try:
                out[name] = check_param(schema.param[name], typed[name])
            except ValueError as exc:
                raise ValueError(f"{option(name)} {_show(getattr(args, name))} {exc}") from None
        elif base and name in base:
            out[name] = check(schema, name, base[name])
        else:
            out[name] = defaults.get(name, schema.param[name].default)
    return out


__all__ = ["Settings", "EPSettings", "RunSettings", "TrainSettings", "SPEEDS", "TRAIN_GROUPS", "names",
           "allowed", "check", "check_param", "from_text", "to_dict", "from_dict", "parse_query",
           "add_arguments", "given", "from_args", "option"]
