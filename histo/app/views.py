"""The pieces of the page for one analysed image, as HTML built from one row of the Predictor's table.

Numbers are shown with ``DIGITS`` decimals, from the same table that the page's CSV download holds (which
equals histo-predict's ``predictions.csv`` for the same images), so what the page says can be checked
against the file. Each value carries a ``data-*`` attribute naming what it is.
"""

from __future__ import annotations

from html import escape

import pandas as pd

DIGITS = 3
NOTICE = ("For research use only. This is not a medical device and must not be used for diagnosis: the models were "
          "trained on the BreaKHis dataset (one lab, one scanner, H&E at 40-400x), and images unlike it get unreliable "
          "answers.")
TABLE_COLUMNS = ["image", "pred", "agreement", "magnification", "patient", "label"]


def fmt(p: float) -> str:
    return f"{p:.{DIGITS}f}"


def verdict(row: pd.Series, class_names: list[str], members: list[str], method: str) -> str:
    """The ensemble's class and probabilities, agreement, and what the file name says (BreaKHis names)."""
    pred = row["pred"]
    agree = round(float(row["agreement"]) * len(members))
    probs = "".join(
        f'<span class="histo-prob" data-class="{escape(c)}">{escape(c)} <b>{fmt(row[f"prob_{c}"])}</b></span>'
        for c in class_names)
    if len(members) == 1:
        agreement = "one model"
    else:
        agreement = f"{agree} of {len(members)} models predict {escape(pred)}"
        if agree < len(members):
            agreement += ' <span class="histo-warn">(the models disagree: treat this answer as uncertain)</span>'
    facts = [template.format(escape(_text(row, key))) for key, template in
             (("magnification", "magnification {}x"), ("patient", "patient {}"), ("label", "class in the file name: {}"))
             if _text(row, key)]
    about = "; ".join(facts) if facts else "not a BreaKHis file name: magnification, patient and class unknown"
    return (
        f'<div class="histo-verdict"><div class="histo-image-name">{escape(str(row["image"]))}</div>'
        f'<div class="histo-class" data-pred="{escape(pred)}">{escape(pred)}</div>'
        f'<div class="histo-probs">{probs}</div>'
        f'<div class="histo-agreement" data-agree="{agree}">{agreement}; combined by {escape(method)}</div>'
        f'<div class="histo-about">{about}</div></div>'
    )


def _text(row: pd.Series, key: str) -> str:
    value = row.get(key, "")
    return "" if value is None or pd.isna(value) else str(value)


def member_bars(row: pd.Series, class_names: list[str], members: list[str]) -> str:
    """One bar per member: its probability of each class (the ensemble's class first)."""
    order = [row["pred"]] + [c for c in class_names if c != row["pred"]]
    rows = []
    for member in members:
        own = max(class_names, key=lambda c: row[f"{member}.prob_{c}"])
        cells = "".join(
            f'<div class="histo-bar-line"><span class="histo-bar-label">{escape(c)}</span>'
            f'<span class="histo-bar"><span class="histo-bar-fill{" histo-bar-main" if c == row["pred"] else ""}" '
            f'style="width:{100 * row[f"{member}.prob_{c}"]:.1f}%"></span></span>'
            f'<span class="histo-bar-value" data-member="{escape(member)}" data-class="{escape(c)}">'
            f'{fmt(row[f"{member}.prob_{c}"])}</span></div>'
            for c in (order if len(class_names) <= 3 else order[:1]))
        rows.append(f'<div class="histo-member"><div class="histo-member-name">{escape(member)} '
                    f'<span class="histo-member-pred">predicts {escape(own)}</span></div>{cells}</div>')
    return f'<div class="histo-members">{"".join(rows)}</div>'


def summary_table(table: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """The results table shown in the page (the download holds every column)."""
    columns = TABLE_COLUMNS[:2] + [f"prob_{c}" for c in class_names] + TABLE_COLUMNS[2:]
    shown = table[columns].copy()
    for column in [f"prob_{c}" for c in class_names] + ["agreement"]:
        shown[column] = shown[column].map(fmt)
    return shown


def problems(items: list[tuple[str, str]]) -> str:
    """A message listing the files that could not be analysed, and why."""
    if not items:
        return ""
    lines = "".join(f"<li><b>{escape(name)}</b>: {escape(reason)}</li>" for name, reason in items)
    return f'<div class="histo-problems"><b>{len(items)} file(s) could not be analysed:</b><ul>{lines}</ul></div>'


CSS = """
.histo-title {font-size:26px; font-weight:700; margin:4px 0}
.histo-notice {background:#fff4e5; border:1px solid #f0b35a; border-radius:6px; padding:8px 12px; color:#5c3b00}
.histo-verdict {font-size:15px; line-height:1.5}
.histo-image-name {color:#666; word-break:break-all}
.histo-class {font-size:30px; font-weight:700}
.histo-prob {margin-right:16px}
.histo-warn {color:#b30000}
.histo-members {display:flex; flex-direction:column; gap:10px}
.histo-member-name {font-weight:600}
.histo-member-pred {font-weight:400; color:#555}
.histo-bar-line {display:flex; align-items:center; gap:8px}
.histo-bar-label {width:110px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap}
.histo-bar {flex:1; height:12px; background:#eee; border-radius:3px; overflow:hidden; max-width:320px}
.histo-bar-fill {display:block; height:100%; background:#9ab}
.histo-bar-main {background:#2b6cb0}
.histo-bar-value {width:48px; text-align:right; font-variant-numeric:tabular-nums}
.histo-problems {color:#8a1c1c}
"""
