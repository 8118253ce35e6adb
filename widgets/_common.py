"""Small pieces every panel shares: status lines, a choice-button group, a log handler, formatting."""

from __future__ import annotations

import base64
import html
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import traitlets

_STATUS_STYLE = {
    "info": ("#57606a", "•"),
    "running": ("#0969da", "»"),
    "ok": ("#1a7f37", "✓"),
    "warn": ("#9a6700", "!"),
    "error": ("#cf222e", "✗"),
    "cancelled": ("#6e7781", "■"),
}


def status_html(kind: str, text: str) -> str:
    """One status line: a coloured mark and one escaped sentence."""
    color, mark = _STATUS_STYLE.get(kind, _STATUS_STYLE["info"])
    return (
        f'<div class="nbkit-status nbkit-status-{kind}" style="color:{color};line-height:1.5">'
        f"<b>{mark}</b> {html.escape(text)}</div>"
    )


def first_sentence(exc: BaseException, limit: int = 600) -> str:
    """The first line of an exception's message (nbkit errors are one sentence already)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def title_html(text: str, subtitle: str = "") -> str:
    sub = (
        f'<span style="color:#57606a;font-weight:normal"> — {html.escape(subtitle)}</span>'
        if subtitle
        else ""
    )
    return f'<h4 style="margin:4px 0 8px 0">{html.escape(text)}{sub}</h4>'


def table_html(header: Sequence[str], rows: Sequence[Sequence[str]], empty: str = "Nothing yet.") -> str:
    """A compact HTML table; cells are escaped."""
    if not rows:
        return f'<div style="color:#57606a;font-style:italic">{html.escape(empty)}</div>'
    cell = "padding:2px 10px 2px 0;text-align:left;vertical-align:top"
    head = "".join(
        f'<th style="{cell};border-bottom:1px solid #d0d7de">{html.escape(h)}</th>' for h in header
    )
    body = "".join(
        "<tr>" + "".join(f'<td style="{cell}">{html.escape(str(c))}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return f'<table style="border-collapse:collapse;font-size:13px"><tr>{head}</tr>{body}</table>'


def facts_html(pairs: Sequence[tuple[str, str]]) -> str:
    cell = "padding:1px 12px 1px 0;vertical-align:top"
    rows = "".join(
        f'<tr><td style="{cell};color:#57606a">{html.escape(k)}</td><td style="{cell}">{html.escape(v)}</td></tr>'
        for k, v in pairs
    )
    return f'<table style="border-collapse:collapse;font-size:13px">{rows}</table>'


MONOSPACE = "ui-monospace,SFMono-Regular,'DejaVu Sans Mono',Menlo,Consolas,'Liberation Mono',monospace"
# Clipboard API where the page is a secure context (localhost is), else select + execCommand.
_COPY_JS = (
    "var b=this,t=b.closest('.nbkit-code').querySelector('textarea');"
    "function ok(){b.textContent='Copied';setTimeout(function(){b.textContent='Copy';},1500);}"
    "if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(t.value).then(ok);}"
    "else{t.style.display='block';t.select();document.execCommand('copy');t.style.display='none';ok();}"
)


def code_html(code: str, caption: str = "", *, copyable: bool = False) -> str:
    """A code block in a monospace font (Voila's default font is proportional); ``copyable`` adds
    a Copy button (class ``nbkit-copy``) that puts ``code`` on the clipboard."""
    cap = f'<span style="color:#57606a;font-size:12px">{html.escape(caption)}</span>' if caption else ""
    copy = source = ""
    if copyable:
        copy = (
            f'<button class="nbkit-copy" type="button" title="Copy this code" onclick="{html.escape(_COPY_JS)}" '
            'style="font-size:11px;padding:0 8px;margin-left:8px;border:1px solid #d0d7de;border-radius:4px;'
            'background:#fff;cursor:pointer">Copy</button>'
        )
        # The text to copy, after the block people read (hidden: a <pre> cannot be select()ed).
        source = f'<textarea readonly style="display:none">{html.escape(code)}</textarea>'
    head = (
        f'<div style="display:flex;align-items:center;margin-top:4px">{cap}{copy}</div>'
        if cap or copy
        else ""
    )
    return (
        f'<div class="nbkit-code">{head}<pre style="margin:2px 0;padding:4px 8px;background:#f6f8fa;'
        f'border-radius:4px;font-family:{MONOSPACE};font-size:12px;line-height:1.4;white-space:pre-wrap">'
        f"{html.escape(code)}</pre>{source}</div>"
    )


def download_link(text: str, filename: str, mime: str, label: str) -> str:
    """An ``<a download>`` link that carries ``text`` itself, so it works in Voila and JupyterLab."""
    data = base64.b64encode(text.encode()).decode()
    return (
        f'<a download="{html.escape(filename)}" href="data:{mime};base64,{data}" '
        f'title="Download {html.escape(filename)}" style="margin-right:12px">⬇ {html.escape(label)}</a>'
    )


def mib(size: int | float) -> str:
    return f"{size / 1024 / 1024:.1f} MiB"


def count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return str(n)


def card_layout(**extra: str) -> widgets.Layout:
    options = {"border": "1px solid #d0d7de", "padding": "8px 12px", "margin": "0 0 8px 0", **extra}
    return widgets.Layout(**options)


def iter_widgets(root: widgets.Widget) -> Iterator[widgets.Widget]:
    """``root`` and every widget below it (children of boxes, accordions and tabs)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        widget = stack.pop()
        if id(widget) in seen:
            continue
        seen.add(id(widget))
        yield widget
        stack.extend(getattr(widget, "children", ()) or ())


def close_tree(root: widgets.Widget) -> None:
    """Close every widget under ``root`` (the root last)."""
    for widget in reversed(list(iter_widgets(root))):
        if widget is not root:
            widget.close()


class OutputLogHandler(logging.Handler):
    """Log records of one thread appended to an ``Output`` (thread-safe: never ``with out:``)."""

    def __init__(
        self, output: widgets.Output, thread_id: int | None = None, level: int = logging.INFO
    ) -> None:
        super().__init__(level)
        self.output = output
        self.thread_id = thread_id if thread_id is not None else threading.get_ident()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread_id:
            return
        try:
            self.output.append_stdout(self.format(record) + "\n")
        except Exception:  # the panel was closed: nowhere left to show it
            self.handleError(record)


@dataclass(frozen=True)
class Choice:
    """One option of a :class:`ChoiceButtons`; ``unavailable`` is the reason it cannot be picked."""

    value: str
    label: str
    tooltip: str
    detail: str = ""
    unavailable: str = ""


class ChoiceButtons(widgets.VBox):
    """Radio-style buttons where each option can be disabled with its reason (a Dropdown cannot)."""

    value = traitlets.Unicode("", help="The value of the selected option").tag(sync=False)
    disabled = traitlets.Bool(False, help="Freeze every button (unavailable ones stay disabled)").tag(
        sync=False
    )

    def __init__(self, choices: Sequence[Choice], value: str = "", *, vertical: bool = False) -> None:
        super().__init__(layout=widgets.Layout(margin="0 0 6px 0"))
        self.vertical = vertical
        self.buttons: dict[str, widgets.Button] = {}
        self._handlers: dict[str, Callable[[widgets.Button], None]] = {}
        self.choices: dict[str, Choice] = {}
        self.set_choices(choices, value)

    def set_choices(self, choices: Sequence[Choice], value: str = "") -> None:
        self._drop_buttons()
        self.choices = {c.value: c for c in choices}
        self.buttons = {}
        rows: list[widgets.Widget] = []
        for choice in choices:
            button = widgets.Button(
                description=choice.label,
                tooltip=choice.unavailable or choice.tooltip,
                disabled=bool(choice.unavailable) or self.disabled,
                layout=widgets.Layout(width="auto", min_width="92px", margin="0 4px 2px 0"),
            )
            handler = self._picker(choice.value)
            button.on_click(handler)
            self._handlers[choice.value] = handler
            self.buttons[choice.value] = button
            if self.vertical:
                note = choice.detail + (f" — unavailable: {choice.unavailable}" if choice.unavailable else "")
                color = "#8c959f" if choice.unavailable else "#57606a"
                label = widgets.HTML(
                    f'<span style="color:{color};font-size:12px">{_escape(note)}</span>',
                    tooltip=choice.unavailable or choice.tooltip,
                    layout=widgets.Layout(margin="0 0 0 6px"),
                )
                rows.append(widgets.HBox([button, label], layout=widgets.Layout(align_items="center")))
        old_rows = list(self.children)
        # A narrow container (a JupyterLab side panel) wraps the buttons, never cuts their labels.
        wrapping = widgets.Layout(flex_flow="row wrap")
        self.children = (
            rows if self.vertical else [widgets.HBox(list(self.buttons.values()), layout=wrapping)]
        )
        for row in old_rows:  # the rows (and labels) of the choices before
            close_tree(row)
            row.close()
        available = [c.value for c in choices if not c.unavailable]
        wanted = value or self.value
        self.value = wanted if wanted in available else (available[0] if available else "")
        self._restyle()

    def close(self) -> None:
        """Close the buttons, without their click handlers (harmless twice)."""
        self._drop_buttons()
        super().close()

    def _drop_buttons(self) -> None:
        for value, button in self.__dict__.get("buttons", {}).items():
            handler = self._handlers.pop(value, None)
            if handler is not None:
                button.on_click(handler, remove=True)
            button.close()

    def _picker(self, value: str) -> Callable[[widgets.Button], None]:
        return lambda _: self._pick(value)

    def _pick(self, value: str) -> None:
        if value in self.choices and not self.choices[value].unavailable and not self.disabled:
            self.value = value

    @traitlets.validate("value")
    def _check_value(self, proposal: traitlets.Bunch) -> str:
        value = str(proposal["value"])
        choice = self.choices.get(value)
        if value and choice is None:
            raise traitlets.TraitError(f"{value!r} is not one of {', '.join(self.choices)}.")
        if choice is not None and choice.unavailable:
            raise traitlets.TraitError(f"{choice.label} is unavailable: {choice.unavailable}")
        return value

    @traitlets.observe("value")
    def _on_value(self, _: traitlets.Bunch) -> None:
        self._restyle()

    @traitlets.observe("disabled")
    def _on_disabled(self, _: traitlets.Bunch) -> None:
        for value, button in self.buttons.items():
            button.disabled = self.disabled or bool(self.choices[value].unavailable)

    def _restyle(self) -> None:
        for value, button in self.buttons.items():
            selected = value == self.value
            button.button_style = "info" if selected else ""
            button.icon = "check" if selected else ""


def _escape(text: str) -> str:
    return html.escape(text)
