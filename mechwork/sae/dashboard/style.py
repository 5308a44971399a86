"""CSS shared by the Jupyter card and the dashboard page, and the display form of token strings."""

from __future__ import annotations

CSS = """
.mwl{font-family:system-ui,sans-serif;color:#222;font-size:14px}
.mwl h3{font-size:1.1em;margin:.4em 0} .mwl h4{font-size:.95em;margin:.8em 0 .2em}
.mwl .lab{padding:1px 6px;border-radius:3px;background:#eee;font-weight:normal}
.mwl .lv-strong{background:#cdeccd} .mwl .lv-narrow{background:#e3efc9} .mwl .lv-weak{background:#f5eac0}
.mwl .lv-none{background:#f1d6d6} .mwl .lv-tokens{background:#dde6f3}
.mwl .ev,.mwl .st,.mwl .band{margin:.2em 0;color:#555;font-size:.9em} .mwl .muted{color:#888}
.mwl .row{display:flex;gap:1.2em;flex-wrap:wrap;align-items:flex-start}
.mwl .ctx{font-family:ui-monospace,monospace;font-size:.85em;margin:1px 0;white-space:pre;overflow:hidden}
.mwl .ctx span{border-radius:2px} .mwl .ctx .t{outline:1.5px solid #c40}
.mwl .ctx .v{display:inline-block;width:5em;color:#666;background:none}
.mwl .ctx .tag{color:#777;font-size:.85em;background:none}
.mwl table{border-collapse:collapse;font-size:.85em} .mwl td,.mwl th{padding:1px 6px;text-align:right}
.mwl th{background:#f3f3f3} .mwl td.l,.mwl td.tok{text-align:left;font-family:ui-monospace,monospace;white-space:pre}
.mwl .hist rect{fill:#e8762b} .mwl .hist text{font-size:10px;fill:#555}
"""

LEVEL_CLASS = {
    "strong": "lv-strong",
    "narrow": "lv-narrow",
    "weak": "lv-weak",
    "none": "lv-none",
    "tokens": "lv-tokens",
    "dead": "lv-none",
}


def show_token(t: str) -> str:
    """A token string as displayed: newlines and tabs made visible (escaping is the renderer's job)."""
    return t.replace("\n", "\u23ce").replace("\t", "\u21e5").replace("\r", "")
