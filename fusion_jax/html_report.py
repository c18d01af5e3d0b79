"""``report.html``: one page per results folder, gathering what training, evaluation and the
embedding analysis wrote there.

:func:`write` reads the folder's JSON summaries (``summary.json``,
``test_results/test_summary.json``, ``separability/separability.json``) into HTML tables,
embeds the text reports as preformatted blocks, and links every figure it finds
(``plots/``, ``test_results/``, ``separability/``) with a relative path, so the folder can be
moved or zipped whole. Sections appear as their files appear: training writes the page,
evaluation and the analysis rewrite it. A figure no section claims is listed under "Other
figures": the page never hides one::

  from fusion_jax import html_report
  html_report.write("demo_run/results")   # → demo_run/results/report.html
"""

from __future__ import annotations

import datetime
import glob
import html
import json
import os
import urllib.parse
from typing import Optional, Sequence

from fusion_jax import io_utils
from fusion_jax.models import registry

FOLDERS = ("plots", "test_results", "separability")
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1300px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
tr.selected td{font-weight:bold;background:#eef6ee}
.figs{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;max-width:100%}
figure img{max-width:620px;width:100%;border:1px solid #eee}
figcaption{font-size:.8em;color:#555} pre{background:#f8f8f8;padding:.8em;overflow-x:auto;
font-size:.8em} nav a{margin-right:1em} .note{color:#555}
"""


class _Unreadable(dict):
  """What a summary that is not valid JSON (an older, damaged or hand-edited file) reads
  as: empty, with the reason, so the page says why a section is missing instead of the
  training or evaluation that wrote it failing after its results are committed."""

  def __init__(self, path: str, reason: str):
    super().__init__()
    self.note = f"{os.path.basename(path)} could not be read ({reason}); this section is left out"


def _read_json(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    return _Unreadable(path, " ".join(str(e).split())[:120])
  return out if isinstance(out, dict) else _Unreadable(path, "not a JSON object")


def _section(title: str, build) -> str:
  """``build()``'s HTML, or a note when its summary is in a format this version does not
  write (a folder from an older version): the rest of the page still appears."""
  try:
    return build()
  except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
    return (f'<p class="note">The {html.escape(title)} files here are not in the format this '
            f'version writes ({html.escape(type(e).__name__)}: '
            f'{html.escape(" ".join(str(e).split())[:120])}); rerun the binary that wrote '
            'them.</p>')


def stale_test_variants(summary: Optional[dict], test: Optional[dict]) -> list:
  """Variants whose test results were computed from other checkpoints than this folder's
  training (their recorded validation scores differ from ``summary.json``'s): the test
  files of an earlier training run, left beside a new one."""
  out = []
  try:
    for v, t in ((test or {}).get("variants") or {}).items():
      seeds = (((summary or {}).get("variants") or {}).get(v) or {}).get("seeds") or {}
      trained = sorted(round(float(r.get("best_val_score", r.get("best_val_acc"))), 6)
                       for r in seeds.values())
      tested = sorted(round(float(x), 6) for x in (t.get("val_score") or []))
      if trained and tested and tested != trained:
        out.append(v)
  except (AttributeError, TypeError, ValueError):   # (a summary from an older version)
    return []
  return out


def _read_text(path: str) -> Optional[str]:
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return f.read()


def _table(header: Sequence[str], rows: Sequence[Sequence], table_id: str,
           selected: Optional[str] = None) -> str:
  out = [f'<table id="{table_id}"><thead><tr>'
         + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr></thead><tbody>"]
  for row in rows:
    cls = ' class="selected"' if selected is not None and row[0] == selected else ""
    out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row)
               + "</tr>")
  return "\n".join(out) + "</tbody></table>"


def _fmt(x) -> str:
  if x is None:
    return "–"
  if isinstance(x, float):
    return f"{x:.3f}"
  return str(x)


def _mean(xs) -> Optional[float]:
  xs = [x for x in xs if x is not None]
  return float(sum(xs) / len(xs)) if xs else None


class _Figures:
  """The folder's PNGs (relative paths); each section takes its own, the rest is "other"."""

  def __init__(self, root: str):
    self.root = root
    self.left = sorted(os.path.relpath(p, root).replace(os.sep, "/")
                       for d in FOLDERS for p in glob.glob(os.path.join(root, d, "*.png")))

  def take(self, predicate) -> list:
    got = [p for p in self.left if predicate(p)]
    self.left = [p for p in self.left if p not in got]
    return got

  @staticmethod
  def html(paths: Sequence[str]) -> str:
    if not paths:
      return ""
    return '<div class="figs">' + "".join(
        f'<figure><a href="{_url(p)}"><img src="{_url(p)}" '
        f'alt="{html.escape(os.path.basename(p))}" loading="lazy"></a>'
        f"<figcaption>{html.escape(p)}</figcaption></figure>" for p in paths) + "</div>"


def _url(path: str) -> str:
  """A relative path as an attribute value: URL-quoted (a space, '#' or '%' in a file or
  folder name would otherwise break the link), then HTML-escaped."""
  return html.escape(urllib.parse.quote(path.replace(os.sep, "/")))


def _pre(title: str, text: Optional[str], open_: bool = False) -> str:
  if text is None:
    return ""
  return (f"<details{' open' if open_ else ''}><summary>{html.escape(title)}</summary>"
          f"<pre>{html.escape(text)}</pre></details>")


def _validation(root: str, summary: dict, figs: _Figures) -> str:
  metric = summary.get("selection_metric", "accuracy")
  ranking = summary.get("ranking") or list(summary["variants"])
  rows = []
  for v in ranking:
    s = summary["variants"][v]
    seeds = s.get("seeds", {})
    epochs = [x.get("best_epoch") for x in seeds.values()]
    score = [] if metric == "accuracy" else [s.get("best_val_score_mean")]
    rows.append([v, len(seeds), s.get("param_count"), s.get("best_val_acc_mean"),
                 s.get("best_val_acc_std") if len(seeds) > 1 else None, *score,
                 ", ".join(str(e) for e in epochs)])
  header = ["variant", "seeds", "parameters", "best val acc", "± std",
            *([] if metric == "accuracy" else [f"best val {metric}"]), "best epoch"]
  parts = [f'<p>Ranked on validation by {html.escape(metric)}; the selected model is '
           f'<b>{html.escape(ranking[0])}</b>.</p>' if ranking else "",
           _table(header, rows, "validation-table", selected=ranking[0] if ranking else None),
           _Figures.html(figs.take(lambda p: p == "plots/fusion_variants_comparison.png")),
           _pre("fusion_variants_comparison.txt",
                _read_text(os.path.join(root, "fusion_variants_comparison.txt")))]
  return "".join(parts)


def _test(root: str, test: dict) -> str:
  abl = (test.get("modality_ablation") or {}).get("variants", {})
  cal = test.get("calibration") or {}
  rows = []
  for v in test.get("ranking_on_validation") or list(test["variants"]):
    t = test["variants"][v]["test"]
    rows.append([v, _mean(test["variants"][v].get("val_score") or []),
                 _mean(x.get("accuracy") for x in t), _mean(x.get("uar") for x in t),
                 _mean(x.get("macro_f1") for x in t),
                 (cal.get(v) or {}).get("ece"), (abl.get(v) or {}).get("no_speech"),
                 (abl.get(v) or {}).get("no_text")])
  metric = test.get("selection_metric", "accuracy")
  parts = [f'<p>Selected on validation: <b>{html.escape(str(test.get("selected")))}</b>'
           + (f'; on test, <b>{html.escape(str(test["test_winner"]))}</b> scores higher (the '
              'selection does not switch).' if test.get("test_disagrees") else ".") + "</p>",
           _table(["variant", f"val {metric}", "test acc", "test UAR", "test macro F1", "ECE",
                   "acc, speech removed", "acc, text removed"], rows, "test-table",
                  selected=test.get("selected"))]
  names = test.get("class_names") or []
  pcm = test.get("per_class_mean") or {}
  if names and pcm:
    parts.append("<h3>Per-class F1 (test, mean over seeds)</h3>")
    parts.append(_table(["variant", *names], [[v, *pcm[v]["f1"]] for v in pcm],
                        "per-class-table"))
  parts.append(_pre("test_metrics_comparison.txt",
                    _read_text(os.path.join(root, "test_results", "test_metrics_comparison.txt"))))
  return "".join(parts)


def _separability(root: str, sep: dict) -> str:
  rows = [[v, b, r.get("silhouette"), r.get("knn_accuracy"), r.get("linear_probe_accuracy")]
          for v, blocks in sep.get("results", {}).items() for b, r in blocks.items()]
  return (f'<p class="note">{html.escape(str(sep.get("split", "")))} split, '
          f'{html.escape(str(sep.get("subsample", "")))}.</p>'
          + _table(["variant", "block", "silhouette", f"{sep.get('knn_k', 5)}-NN acc",
                    "linear probe acc"], rows, "separability-table")
          + _pre("separability_report.txt",
                 _read_text(os.path.join(root, "separability", "separability_report.txt"))))


def _projection(path: str, variant: str) -> bool:
  """Whether ``path`` is one of the analysis's block projections of ``variant``
  (``separability/{variant}_{block}_{method}.png``: the separability section's)."""
  name = os.path.basename(path)
  return path.startswith("separability/") and any(name.startswith(f"{variant}_{b}_")
                                                  for b in registry.BLOCKS)


def render(root: str) -> str:
  """The page for the results folder ``root`` (what :func:`write` saves)."""
  summary = _read_json(os.path.join(root, "summary.json"))
  test = _read_json(os.path.join(root, "test_results", "test_summary.json"))
  sep = _read_json(os.path.join(root, "separability", "separability.json"))
  figs = _Figures(root)
  variants = list((summary or {}).get("ranking") or (summary or {}).get("variants") or [])
  for v in (test or {}).get("variants", {}):
    variants += [v] if v not in variants else []
  sections = []   # (id, title, html)
  for what, x in (("Training and validation", summary), ("Test", test),
                  ("Separability", sep)):
    if isinstance(x, _Unreadable):
      sections.append((what.split()[0].lower(), what, f'<p class="note">{html.escape(x.note)}'
                       "</p>"))
  if summary:
    sections.append(("validation", "Training and validation",
                     _section("training", lambda: _validation(root, summary, figs))))
  if test:
    stale = stale_test_variants(summary, test)
    warn = (f'<p class="note"><b>These test results are from an earlier training run</b>: '
            f'the checkpoints of {html.escape(", ".join(stale))} they evaluated had other '
            "validation scores than this folder's training. Rerun evaluate.py.</p>"
            if stale else "")
    sections.append(("test", "Test", warn + _section("test", lambda: _test(root, test))))
  per_variant = []
  for v in sorted(variants, key=len, reverse=True):   # (a longer name first: no prefix clash)
    mine = figs.take(lambda p, v=v: os.path.basename(p).startswith(f"{v}_")
                     and not _projection(p, v))
    per_variant.append((v, mine))
  order = {v: i for i, v in enumerate(variants)}
  body = "".join(f'<h3 id="variant-{html.escape(v)}">{html.escape(v)}</h3>' + _Figures.html(p)
                 for v, p in sorted(per_variant, key=lambda x: order[x[0]]) if p)
  if body:
    sections.append(("variants", "Per variant: curves, confusion matrices, calibration", body))
  failures = _read_text(os.path.join(root, "test_results", "failure_cases_report.txt"))
  if failures is not None:
    sections.append(("failures", "Failure cases (with file names)", _pre(
        "failure_cases_report.txt", failures, open_=True)))
  ablation = _read_text(os.path.join(root, "test_results", "modality_ablation.txt"))
  removal_figs = figs.take(lambda p: p in ("test_results/modality_reliance.png",
                                           "test_results/fusion_gain_per_class.png"))
  if ablation is not None or removal_figs:
    sections.append(("modality", "Modality removal", _Figures.html(removal_figs)
                     + _pre("modality_ablation.txt", ablation, open_=True)))
  if sep or any(p.startswith("separability/") for p in figs.left):
    sep_figs = figs.take(lambda p: p.startswith("separability/"))
    first = [p for p in sep_figs if p.endswith("fusion_comparison_all.png")]
    sections.append(("separability", "Separability of the blocks (t-SNE / UMAP / PCA)",
                     (_section("separability", lambda: _separability(root, sep)) if sep
                      else "")
                     + _Figures.html(first + [p for p in sep_figs if p not in first])))
  if figs.left:
    sections.append(("other", "Other figures", _Figures.html(figs.take(lambda p: True))))
  stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  nav = "".join(f'<a href="#{i}">{html.escape(t)}</a>' for i, t, _ in sections)
  title = f"fusion_jax results: {os.path.basename(os.path.abspath(root))}"
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
          f"<h1>{html.escape(title)}</h1><p class=\"note\">Written {stamp} from the files in "
          "this folder (figures are relative links).</p>"
          f"<nav>{nav}</nav>"
          + "".join(f'<section id="{i}"><h2>{html.escape(t)}</h2>{h}</section>'
                    for i, t, h in sections)
          + ("" if sections else "<p>Nothing in this folder yet.</p>") + "</body></html>\n")


def write(root: str) -> str:
  """Writes ``root/report.html`` (atomically) and returns its path."""
  path = os.path.join(root, "report.html")
  io_utils.write_text(path, render(root))
  return path
