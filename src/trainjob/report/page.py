"""The report as one self-contained HTML page: inline CSS, inline SVG (charts.py), and a few lines
of inline script for highlighting and sorting. No request leaves the page: no CDN, no font, no
image file, so it opens the same from a USB stick on an air-gapped laptop.

Every string that comes from a run (names, config values, notes) is escaped.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from .. import metrics
from . import charts
from .collect import Found, Group, Run

STATE_CLASS = {
    "finished": "ok",
    "stopped by hyperband": "stop",
    "stopped": "stop",
    "preempted": "pre",
    "failed": "bad",
    "running or killed": "run",
}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
max-width:1100px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:20px 0 6px}.meta{color:#666}code{font-size:12px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
td.why{white-space:normal;font-size:12px}.scroll{overflow-x:auto}
th{cursor:pointer;background:#f6f6f6;user-select:none}td.num{text-align:right}
tr.hl td{background:#fff6d5}.state{padding:1px 6px;border-radius:8px;font-size:12px}
.ok{background:#e3f4e6}.stop{background:#fdebd0}.pre{background:#e2ecf9}.bad{background:#f9dcdc}
.run-state{background:#eee}.notes{color:#a04000}.chart{width:100%;max-width:720px;display:block}
.axis line{stroke:#999}.axis line.grid{stroke:#eee}.axis text{font-size:11px;fill:#555}
.axis .label{font-size:12px;fill:#333}.tick{font-size:10px;fill:#333}.band{stroke-dasharray:4 3}
.planned{fill:#f0f0f0}.dim .run{opacity:.12}.dim .run.hl{opacity:1;stroke-width:3}
details{margin:4px 0}summary{cursor:pointer}pre{background:#f8f8f8;padding:8px;overflow:auto}
.legend{font-size:12px;color:#555}.pair{display:grid;grid-template-columns:1fr 1fr;gap:16px}
dl.kv{columns:3;font-size:12px;margin:0}dl.kv div{break-inside:avoid}
dl.kv dt{display:inline;color:#666}
dl.kv dd{display:inline;margin:0 0 0 4px;font-family:monospace;word-break:break-all}
"""

# Highlight one run everywhere (rows and marks share data-run); sort a table by a header click.
SCRIPT = """
(function(){
  function mark(id,on){
    document.querySelectorAll('[data-run]').forEach(function(e){
      e.classList.toggle('hl',on&&e.getAttribute('data-run')===id);});
    document.querySelectorAll('.chart,table.board').forEach(function(c){
      c.classList.toggle('dim',on);});
  }
  document.querySelectorAll('[data-run]').forEach(function(e){
    e.addEventListener('mouseenter',function(){mark(e.getAttribute('data-run'),true);});
    e.addEventListener('mouseleave',function(){mark('',false);});
  });
  document.querySelectorAll('table.board th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var body=th.closest('table').tBodies[0],rows=Array.prototype.slice.call(body.rows);
      var up=th.getAttribute('data-up')!=='1';th.setAttribute('data-up',up?'1':'0');
      rows.sort(function(a,b){
        var x=a.cells[i].getAttribute('data-v'),y=b.cells[i].getAttribute('data-v');
        var nx=parseFloat(x),ny=parseFloat(y),c;
        if(!isNaN(nx)&&!isNaN(ny)){c=nx-ny;}else{c=String(x).localeCompare(String(y));}
        return up?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
})();
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _cell(value: Any, shown: str | None = None, num: bool = False) -> str:
    sort = value if isinstance(value, int | float) and not isinstance(value, bool) else shown
    text = _fmt(value) if shown is None else shown
    cls = ' class="num"' if num else ""
    return f'<td{cls} data-v="{escape(str(sort if sort is not None else ""))}">{escape(text)}</td>'


def _colours(group: Group) -> dict[str, str]:
    """Each run's colour: its place in the ranking (best dark, worst light; no metric grey)."""
    ranked = [r for r in group.ranked() if group.value(r) is not None]
    n = max(len(ranked) - 1, 1)
    found = {
        r.run_id: charts.colour(i / n if len(ranked) > 1 else 0.0) for i, r in enumerate(ranked)
    }
    return {r.run_id: found.get(r.run_id, charts.MISSING) for r in group.runs}


def leaderboard(group: Group) -> str:
    params = group.parameters
    head = ["#", "run", "name", "state", group.metric, *params, "epochs", "train s", "wall s"]
    rows = []
    for i, run in enumerate(group.ranked(), 1):
        config = run.config
        state = run.state
        cells = [
            _cell(i, num=True),
            _cell(run.run_id),
            _cell(_short(run, group)),
            f'<td data-v="{escape(state)}"><span class="state {STATE_CLASS.get(state, "bad")}">'
            f"{escape(state)}</span>{_exit(run)}</td>",
            _cell(group.value(run), num=True),
            *(_cell(config.get(p)) for p in params),
            _cell(len(run.epoch_values), num=True),
            _cell(run.train_s, _fmt(run.train_s, 1), num=True),
            _cell(run.wall_s, _fmt(run.wall_s, 1), num=True),
        ]
        rows.append(f'<tr data-run="{escape(run.run_id)}">{"".join(cells)}</tr>')
    return _table(head, rows)


def _table(head: list[str], rows: list[str]) -> str:
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    return (
        f'<div class="scroll"><table class="board"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _exit(run: Run) -> str:
    """The exit code, and how many processes the run took (more than one: it was resumed)."""
    said = [f"exit {run.exit_code}"] if run.exit_code is not None else []
    if len(run.parts) > 1:
        said.append(f"{len(run.parts)} processes")
    return f' <span class="meta">{escape(", ".join(said))}</span>' if said else ""


def _short(run: Run, group: Group) -> str:
    """A sweep trial's name without the sweep's (``convnet-mnist-003-1a2b`` -> ``003-1a2b``)."""
    return run.name.removeprefix(f"{group.name}-") or run.name


def _label(run: Run, group: Group) -> str:
    config = run.config
    values = ", ".join(f"{p}={_fmt(config.get(p))}" for p in group.parameters)
    value = group.value(run)
    metric = "-" if value is None else f"{value:.4f}"
    return f"{run.name} ({run.state}) {group.metric}={metric}" + (f"; {values}" if values else "")


def plots(group: Group) -> str:
    colours = _colours(group)
    runs = group.ranked()
    out = []
    axes = [
        charts.Axis(p, [r.config.get(p) for r in runs], group.log_scale(p))
        for p in group.parameters
    ]
    if axes:
        axes.append(charts.Axis(group.metric, [group.value(r) for r in runs]))
        svg = charts.parallel_coordinates(
            axes,
            [r.run_id for r in runs],
            [_label(r, group) for r in runs],
            [colours[r.run_id] for r in runs],
        )
        if svg:
            out.append(
                f"<h3>Parallel coordinates: swept parameters and {escape(group.metric)}</h3>{svg}"
            )
    loss = [
        charts.Series(
            r.run_id, _label(r, group), r.series(metrics.LOSS), colours[r.run_id], _stopped(r)
        )
        for r in runs
    ]
    svg = charts.line_chart(loss, metrics.LOSS, "examples seen (step)", metrics.LOSS)
    pair = [f"<div><h3>Loss</h3>{svg or '<p class=meta>no loss logged</p>'}</div>"]
    accuracy = [
        charts.Series(
            r.run_id,
            _label(r, group),
            r.series(metrics.TEST_ACCURACY),
            colours[r.run_id],
            _stopped(r),
        )
        for r in runs
    ]
    svg = charts.line_chart(
        accuracy, "per-epoch accuracy", "examples seen (step)", metrics.TEST_ACCURACY
    )
    pair.append(f"<div><h3>Test accuracy after each epoch</h3>{svg or '<p>none logged</p>'}</div>")
    out.append(f'<div class="pair">{"".join(pair)}</div>')
    out.append(
        '<p class="legend">Colour: rank by the metric (dark = best, grey = no value); '
        "a cross marks where a trial was stopped. Point at a line or a row to pick a run out.</p>"
    )
    return "".join(out)


def _stopped(run: Run) -> bool:
    return run.state.startswith("stopped")


def hyperband(group: Group) -> str:
    rule = group.early_terminate
    stopped = [r for r in group.runs if _stopped(r)]
    if rule is None and not stopped:
        return ""
    colours = _colours(group)
    planned = [r.config.get("epochs") for r in group.ranked()]
    bars = [
        charts.Bar(
            r.run_id,
            _short(r, group)[-28:],
            len(r.epoch_values),
            int(p) if isinstance(p, int) else len(r.epoch_values),
            _stopped(r),
            colours[r.run_id],
        )
        for r, p in zip(group.ranked(), planned, strict=True)
    ]
    stops = sorted({b.epochs for b in bars if b.stopped})
    out = ["<h3>Early termination</h3>"]
    if rule:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in rule.items())
        out.append(
            f"<p>Rule: <code>{escape(shown)}</code>. {len(stopped)} of {len(group.runs)} "
            "trial(s) stopped; dashed lines: the epochs after which a trial was stopped.</p>"
        )
    out.append(charts.epochs_chart(bars, stops))
    if stopped:
        rows = [
            f'<tr data-run="{escape(r.run_id)}">{_cell(r.name)}'
            f"{_cell(len(r.epoch_values), num=True)}{_cell(group.value(r), num=True)}"
            f'<td class="why">{escape(str(r.summary.get(metrics.STOPPED, "")))}</td></tr>'
            for r in stopped
        ]
        head = ["trial", "stopped after epoch", f"{group.metric} then", "why"]
        out.append(_table(head, rows))
    return "".join(out)


def _pairs(values: dict[str, Any]) -> str:
    """``key value`` pairs in columns (a dict value as compact JSON)."""
    items = "".join(
        f"<div><dt>{escape(k)}</dt><dd>{escape(_fmt(v, 6) if isinstance(v, float) else _fmt(v))}"
        "</dd></div>"
        for k, v in sorted(values.items())
    )
    return f'<dl class="kv">{items}</dl>'


def details(group: Group) -> str:
    """Each run, folded: its ONNX file, its folders, what could not be read, config, summary."""
    out = ["<h3>Runs</h3>"]
    for run in group.ranked():
        onnx = escape(str(run.onnx)) if run.onnx else "not found"
        folders = "".join(f"<li><code>{escape(str(p.path.parent))}</code></li>" for p in run.parts)
        notes = "".join(f"<li>{escape(n)}</li>" for n in run.notes)
        summary = {k: v for k, v in run.summary.items() if not k.startswith("_")}
        flag = " <span class=notes>(not read whole)</span>" if run.notes else ""
        out += [
            f'<details data-run="{escape(run.run_id)}"><summary>{escape(run.name)} '
            f'<span class="meta">{escape(run.run_id)} · {escape(run.state)}</span>{flag}</summary>',
            f"<p>ONNX model: <code>{onnx}</code></p>",
            f"<p>Run folders, oldest first:</p><ul>{folders or '<li>none found</li>'}</ul>",
            f'<p class="notes">Not read whole:</p><ul class="notes">{notes}</ul>' if notes else "",
            f"<p>Config:</p>{_pairs(run.config)}",
            f"<p>Summary:</p>{_pairs(summary)}</details>",
        ]
    return "".join(out)


def section(group: Group) -> str:
    """One sweep (or group) of runs: a line of counts, then the leaderboard, plots, details."""
    kind = "Sweep" if group.sweep else ("Group" if group.name != "runs" else "Runs")
    counts: dict[str, int] = {}
    for run in group.runs:
        counts[run.state] = counts.get(run.state, 0) + 1
    said = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    best = next((r for r in group.ranked() if group.value(r) is not None), None)
    if best is not None:
        said += f" · best {group.metric} {group.value(best):.4f} ({best.name})"
    if group.sweep:
        said += f" · {group.sweep.get('method')} search"
    return (
        f'<section class="group" data-group="{escape(group.name)}">'
        f"<h2>{kind}: {escape(group.name)}</h2>"
        f'<p class="meta">{len(group.runs)} run(s): {escape(said)}</p>'
        f"{leaderboard(group)}{plots(group)}{hyperband(group)}{details(group)}</section>"
    )


def render(found: Found, title: str, sources: list[str], generated: str) -> str:
    notes = "".join(f"<li>{escape(n)}</li>" for n in found.notes)
    damaged = [r for r in found.runs if r.notes]
    warning = ""
    if damaged or notes:
        warning = (
            f'<p class="notes" id="warnings">{len(damaged)} run(s) could not be read whole; '
            "what could be read is shown, and each run's notes say what is missing.</p>"
            + (f'<ul class="notes">{notes}</ul>' if notes else "")
        )
    body = "".join(section(g) for g in found.groups)
    where = ", ".join(f"<code>{escape(s)}</code>" for s in sources)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        # No request may leave the page, whatever a run's strings hold.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="meta">{len(found.runs)} run(s) in '
        f"{len(found.groups)} group(s) from {where} · generated {escape(generated)} by "
        "<code>trainjob report</code></p>"
        f"{warning}{body}<script>{SCRIPT}</script></body></html>\n"
    )
