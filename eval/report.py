"""One self-contained HTML report (tables + embedded PNG plots) from the benchmarks and evaluations."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rag.errors import RagError


@dataclass
class Section:
    """One part of the report: a table of rows (dicts keyed by column), plots and notes."""

    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)  # column -> format spec for its numbers, e.g. ",.1f"


def _cell(value, spec: str | None = None) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return format(value, spec or (".4f" if isinstance(value, float) else ","))
    return html.escape(str(value))


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}"></figure>'


def render_html(title: str, sections: list[Section]) -> str:
    """The whole page as one string: no external files, images inlined as data: URLs."""
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px}"
        "td{text-align:right}td:first-child,th{text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%}figure{margin:1em 0}.note{color:#555}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Written {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}.</p>',
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for note in section.notes:
            parts.append(f'<p class="note">{html.escape(note)}</p>')
        if section.rows:
            parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in section.columns)
                         + "</tr></thead><tbody>")
            for row in section.rows:
                parts.append("<tr>" + "".join(f"<td>{_cell(row.get(c), section.formats.get(c))}</td>" for c in section.columns) + "</tr>")
            parts.append("</tbody></table>")
        parts.extend(_image(p) for p in section.images if Path(p).is_file())
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, title: str, sections: list[Section]) -> Path:
    """Write the page atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_html(title, sections), encoding="utf-8")
    tmp.replace(path)
    return path


RETRIEVAL_COLUMNS = ["backend", "mode", "hyde", "ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100", "qps",
                     "ndcg@10 vs flat"]


def retrieval_section(report) -> Section:
    """The retrieval evaluation (an eval.retrieval.RetrievalReport) as a report section."""
    flat = {(r.mode, r.hyde): r.metrics["ndcg@10"] for r in report.rows if r.backend == "flat"}
    rows = []
    for row in report.rows:
        cells = row.to_json()
        cells["backend"] = cells["backend"] or "— (keyword)"
        if row.backend not in (None, "flat") and (row.mode, row.hyde) in flat:
            cells["ndcg@10 vs flat"] = row.metrics["ndcg@10"] - flat[(row.mode, row.hyde)]
        rows.append(cells)
    title = (f"Retrieval quality: {report.dataset.name} ({report.dataset.split}), "
             f"{len(report.dataset.corpus):,} documents, {report.queries} queries")
    return Section(title, RETRIEVAL_COLUMNS, rows, list(report.plots), list(report.notes),
                   {"qps": ",.4g", "ndcg@10 vs flat": "+.4f"})


ANN_COLUMNS = ["backend", "setting", "default", "build_s", "recall_at_1", "recall_at_10", "qps", "bytes_per_vector"]
ANSWER_COLUMNS = ["reader", "hyde", "exact_match", "f1", "contains", "cited_ok", "grounded", "refusal_ok",
                  "p50_s", "p95_s"]
MIN_ANN_VECTORS = 500


def ann_section(store, out_dir: Path, backends: list[str] | None = None, max_queries: int = 1000,
                progress=None) -> tuple[Section, object | None]:
    """The ANN benchmark (eval.ann) over the dataset's own stored passage embeddings."""
    from eval.ann import plot, run_benchmark, split_queries

    _, vectors = store.library.embeddings()
    title = "Vector index backends on this dataset's passage embeddings"
    if len(vectors) < MIN_ANN_VECTORS:
        return Section(title, notes=[f"skipped: {len(vectors)} passage vectors are too few for a meaningful "
                                     f"benchmark (at least {MIN_ANN_VECTORS})"]), None
    n_queries = min(max_queries, len(vectors) // 10)
    base, queries = split_queries(vectors, None, n_queries=n_queries)
    report = run_benchmark(base, queries, f"{store.directory.name} passages", backends, progress or (lambda line: None))
    png = plot(report, out_dir / f"ann-{store.directory.name}.png")
    rows = [{c: getattr(run, c) for c in ANN_COLUMNS} for run in report.runs]
    notes = [f"{report.n:,} vectors indexed, {report.n_queries:,} held-out passage vectors as queries, "
             "recall against exact search, single-thread queries/s; default = the parameters create_index uses"]
    notes += [f"benchmark target [{'met' if met else 'missed'}] {target}: {how}" for target, met, how in report.targets]
    notes += report.notes
    return Section(title, ANN_COLUMNS, rows, [png], notes,
                   {"build_s": ".2f", "recall_at_1": ".3f", "recall_at_10": ".3f", "qps": ",.0f",
                    "bytes_per_vector": ",.0f"}), report


def answer_section(data_dir: Path, questions: int, progress=None) -> tuple[Section, object | None]:
    """The answer evaluation (eval.answer_bench) on its Python-docs questions: every reader, when a generator loads."""
    from eval import answer_bench
    from rag.answer.readers import READERS
    from rag.models.generators import load_generator

    title = "Answers (every reader, questions over the Python docs)"
    readers = tuple(READERS)
    try:
        load_generator("local", data_dir=data_dir)
    except RagError as exc:
        readers = tuple(r for r in READERS if r == "extract")
        if not readers:
            return Section(title, notes=[f"skipped: no generator available ({exc})"]), None
    bench = answer_bench.run(data_dir, readers=readers, limit=questions, progress=progress)
    rows = [{c: result.get(c) for c in ANSWER_COLUMNS} for result in bench.results]
    notes = [f"{bench.dataset['path']}: {bench.dataset['questions']} questions, k=5, hybrid retrieval; "
             "EM/F1 with the official SQuAD normalization; contains/cited ok over answerable questions, "
             "refusal over unanswerable ones (see `rag eval answer` for the full run)"]
    return Section(title, ANSWER_COLUMNS, rows, [], notes,
                   {"exact_match": ".2f", "f1": ".2f", "contains": ".2f", "cited_ok": ".2f", "grounded": ".2f",
                    "refusal_ok": ".2f", "p50_s": ".2f", "p95_s": ".2f"}), bench


def build_report(dataset_dir: str | Path, data=None, backends: list[str] | None = None,
                 modes: list[str] | None = None, hyde: bool = False, limit: int | None = None,
                 split: str = "test", ann: bool = True, answers: int = 5, progress=None) -> tuple[Path, dict]:
    """Retrieval evaluation, ANN benchmark and (when a generator loads) answer evaluation in one HTML file.

    Returns the page's path and a JSON summary of every part (None for a part skipped).
    """
    from eval.retrieval import evaluate_retrieval
    from rag.config import data_dir as resolve_data_dir

    root = resolve_data_dir(data)
    say = progress or (lambda line: None)
    say("retrieval evaluation")
    retrieval = evaluate_retrieval(dataset_dir, data=root, backends=backends, modes=modes, hyde=hyde, limit=limit,
                                   split=split, progress=progress is not None)
    sections = [retrieval_section(retrieval)]
    summary: dict = {"retrieval": retrieval.to_json(), "ann": None, "answers": None}
    plots_dir = root / "eval" / "plots"
    if ann:
        say("ANN benchmark on the dataset's passage embeddings")
        section, ann_report = ann_section(retrieval.store, plots_dir, backends, progress=say)
        sections.append(section)
        summary["ann"] = ann_report.to_json() if ann_report else None
    if answers > 0:
        say("answer evaluation")
        section, bench = answer_section(root, answers, progress=say)
        sections.append(section)
        summary["answers"] = bench.results if bench else None
    path = root / "eval" / f"report-{retrieval.dataset.name}-{retrieval.dataset.split}.html"
    write_report(path, f"rag evaluation report: {retrieval.dataset.name}", sections)
    return path, summary
