"""Progress that reads well in a log: live bars on a terminal, plain lines off one.

fastprogress draws bars with carriage returns; piped into a file (`> fit.log`, CI) that is
either thousands of lines or, with its NO_BAR switch, nothing at all but still a stray block
character: each bar's constructor prints its fill character once to probe the terminal's
encoding, NO_BAR or not. Off a terminal clfapp therefore turns the bars off, drops that probe,
and lets a top-level bar (a long prediction, decoding) print one plain line every
`STEP_PCT` percent. Training's per-epoch bars stay silent: fastai's epoch rows (printed by
the master bar's `write`, which NO_BAR does not silence) are the log's lines.
"""
from __future__ import annotations

import sys

STEP_PCT = 10


def plain_lines_off_terminal(stream=None) -> bool:
    """Plain lines when `stream` (stdout) is not a terminal (True then), live bars when it is."""
    import fastprogress.fastprogress as fp
    stream = stream or sys.stdout
    fp.NO_BAR = not _isatty(stream)   # on a terminal: fastprogress's live bars
    if not fp.NO_BAR:
        return False
    bar = fp.ConsoleProgressBar
    if not getattr(bar, "_clfapp_plain", False):
        # patched on the class: fastai and clfapp import the name in several modules; the
        # originals still run whenever NO_BAR is off again (a terminal)
        _ORIGINAL.update(init=bar.__init__, on_update=bar.on_update)
        bar.__init__, bar.on_update, bar._clfapp_plain = _init, _on_update, True
    return True


_ORIGINAL: dict = {}


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


def _init(self, gen, total=None, display=True, leave=True, parent=None, master=None, txt_len=60):
    """ConsoleProgressBar.__init__ without its probe print of the fill character."""
    import fastprogress.fastprogress as fp

    from ..models.compat import init_console_bar_quietly
    if not fp.NO_BAR:
        return _ORIGINAL["init"](self, gen, total, display, leave, parent, master, txt_len)
    self._next_pct = STEP_PCT
    self.update_every = 0   # see every step: the lines are per percent, not per 0.2 s
    init_console_bar_quietly(self, gen, total, display, leave, parent, master, txt_len)


def _on_update(self, val, text):
    """One plain line per STEP_PCT percent for a bar of its own; nothing for a child bar."""
    import fastprogress.fastprogress as fp
    if not fp.NO_BAR:
        return _ORIGINAL["on_update"](self, val, text)
    if self.parent is not None or not self.display or not self.total:
        return
    pct = 100 * val / self.total
    if val and (pct >= self._next_pct or val >= self.total):
        print(f"progress {text}", flush=True)  # text: "30.00% [3/10 00:02<00:05]"
        self._next_pct = (int(pct) // STEP_PCT + 1) * STEP_PCT
