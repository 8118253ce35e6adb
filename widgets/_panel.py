"""Panel: a box whose ``close()`` is correct by construction.

A panel registers its observers, links, click handlers, message handlers, callback
dispatchers, background tasks and the widgets it owns through the methods below instead of calling ``observe`` or
``on_click`` itself; ``close()`` then undoes every registration, cancels the tasks, closes
the owned widgets and everything in its tree, and does nothing the second time. A panel
closed half-way through its ``__init__`` (an exception, or the garbage collector calling
``close()``) closes what it had registered so far.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ipywidgets as widgets
import traitlets

from ._common import close_tree
from ._worker import BackgroundTask

log = logging.getLogger(__name__)

Handler = Callable[..., Any]


class Panel(widgets.VBox):
    """A VBox that remembers what it wired, so ``close()`` can unwire all of it."""

    def __init__(self, children: Sequence[widgets.Widget] = (), **kwargs: Any) -> None:
        self._start_registry()
        super().__init__(list(children), **kwargs)

    # -- registering ------------------------------------------------------------------------------

    def _start_registry(self) -> None:
        """Create the registry (idempotent); subclasses may call it before building their widgets."""
        if "_observers" in self.__dict__:
            return
        self._closed = False
        self._observers: list[tuple[traitlets.HasTraits, Handler, Any]] = []
        self._links: list[traitlets.link | traitlets.dlink] = []
        self._clicks: list[tuple[widgets.Button, Handler]] = []
        self._messages: list[tuple[widgets.Widget, Handler]] = []
        self._tasks: list[BackgroundTask] = []
        self._owned: list[Any] = []
        self._dispatchers: list[widgets.CallbackDispatcher] = []
        self._close_hooks: list[Callable[[], None]] = []

    def watch(self, owner: traitlets.HasTraits, handler: Handler, names: str | Iterable[str]) -> None:
        """``owner.observe(handler, names)``, undone by ``close()``."""
        self._start_registry()
        names = names if isinstance(names, str) else list(names)
        owner.observe(handler, names=names)
        self._observers.append((owner, handler, names))

    def unwatch(self, owner: traitlets.HasTraits, handler: Handler, names: str | Iterable[str]) -> None:
        """Undo one :meth:`watch` before ``close()`` (e.g. for widgets that are replaced)."""
        names = names if isinstance(names, str) else list(names)
        with contextlib.suppress(ValueError):
            owner.unobserve(handler, names=names)
        self._observers = [
            o for o in self._observers if not (o[0] is owner and o[1] == handler and o[2] == names)
        ]

    def link(self, source: tuple[Any, str], target: tuple[Any, str]) -> traitlets.link:
        """A two-way ``traitlets.link``, unlinked by ``close()``."""
        self._start_registry()
        made = traitlets.link(source, target)
        self._links.append(made)
        return made

    def dlink(
        self, source: tuple[Any, str], target: tuple[Any, str], transform: Handler | None = None
    ) -> traitlets.dlink:
        """A one-way ``traitlets.dlink``, unlinked by ``close()``."""
        self._start_registry()
        made = traitlets.dlink(source, target, transform)
        self._links.append(made)
        return made

    def on_click(self, button: widgets.Button, handler: Handler) -> None:
        """``button.on_click(handler)``, removed by ``close()``."""
        self._start_registry()
        button.on_click(handler)
        self._clicks.append((button, handler))

    def on_msg(self, widget: widgets.Widget, handler: Handler) -> None:
        """``widget.on_msg(handler)`` (custom messages such as Enter in a Text), removed by ``close()``."""
        self._start_registry()
        widget.on_msg(handler)
        self._messages.append((widget, handler))

    def dispatcher(self) -> widgets.CallbackDispatcher:
        """A ``CallbackDispatcher`` for the panel's own events (``on_chosen``), emptied by ``close()``."""
        self._start_registry()
        made = widgets.CallbackDispatcher()
        self._dispatchers.append(made)
        return made

    def own_task(self, task: BackgroundTask) -> BackgroundTask:
        """A background task ``close()`` cancels."""
        self._start_registry()
        self._tasks.append(task)
        return task

    def own(self, *owned: Any) -> None:
        """Widgets (or anything with ``close()``) that ``close()`` closes, shown or not."""
        self._start_registry()
        self._owned.extend(owned)

    def on_close(self, hook: Callable[[], None]) -> None:
        """``hook()`` runs in ``close()``, after the tasks are cancelled and before widgets close."""
        self._start_registry()
        self._close_hooks.append(hook)

    @property
    def closed(self) -> bool:
        return bool(self.__dict__.get("_closed", True))

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel the tasks, unwire every registration, close every widget; harmless twice."""
        if self.__dict__.get("_closed", True):  # closed already, or __init__ never got this far
            super().close()
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for hook in self._close_hooks:
            try:
                hook()
            except Exception:  # one failing hook must not leave the rest wired
                log.exception("A close hook of %s failed", type(self).__name__)
        for made in self._links:
            with contextlib.suppress(Exception):  # unlinking twice raises in some traitlets versions
                made.unlink()
        for owner, handler, names in self._observers:
            with contextlib.suppress(ValueError):
                owner.unobserve(handler, names=names)
        for button, handler in self._clicks:
            button.on_click(handler, remove=True)
        for widget, handler in self._messages:
            widget.on_msg(handler, remove=True)
        for made in self._dispatchers:
            made.callbacks = []
        self._links, self._observers, self._clicks, self._messages = [], [], [], []
        self._close_hooks = []
        for owned in reversed(self._owned):
            with contextlib.suppress(Exception):
                owned.close()
        self._owned = []
        close_tree(self)
        super().close()
