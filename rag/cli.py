"""The ``rag`` command line: one click group; each command's docstring is its --help."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import click

from rag.contract import ASK_K, DEFAULT_MODE, DEFAULT_READER, MODES, SEARCH_K, readers

data_option = click.option(
    "--data", "data", envvar="RAG_DATA", default=None, type=click.Path(file_okay=False),
    help="Data directory (default ./rag-data).",
)


@click.group()
@click.version_option(package_name="rag")
def main() -> None:
    """Search and question answering over your own documents."""


# --- documents: ingest, search, stats, docs, rm, reindex ------------------------------------------

model_option = click.option("--model", default=None, help="sentence-transformers model directory (default all-MiniLM-L6-v2).")


cluster_option = click.option(
    "--cluster", "cluster", envvar="RAG_RAY_ADDRESS", default=None, metavar="ADDRESS",
    help="Use the library sharded over a Ray cluster: its address, 'auto' (the cluster running here) or "
         "'local' (start one in this process). Needs the cluster extra: pip install -e '.[cluster]'.")
partial_option = click.option(
    "--allow-partial", is_flag=True,
    help="With --cluster: if a shard stays down, return the other shards' results marked partial instead of an error.")


@contextmanager
def _library(data, model=None, backend=None, create=False, encoder_backend=None, cluster=None, shards=None,
             allow_partial=False) -> Iterator:
    """The data directory's library (sharded on Ray with ``cluster``), closed afterwards; a RagError becomes
    a clear message and exit 1. Only ``ingest`` (and ``serve``) may create a store."""
    from rag.errors import RagError

    try:
        if cluster:  # only then is Ray imported
            from rag.cluster.library import open_cluster_library

            opened = open_cluster_library(data, cluster, shards=shards, model=model, backend=backend,
                                          encoder_backend=encoder_backend, create=create, allow_partial=allow_partial)
        else:
            from rag.library import open_library

            opened = open_library(data, model=model, backend=backend, create=create, encoder_backend=encoder_backend)
        with opened as library:
            yield library
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def _missing_shards(library) -> Iterator:
    """On a cluster library: the list of shards left out of the results (--allow-partial); else None."""
    tracking = getattr(library, "tracking_missing", None)
    if tracking is None:
        yield None
    else:
        with tracking() as missing:
            yield missing


def _warn_partial(missing) -> None:
    if missing:
        click.echo(f"partial results: shard(s) {', '.join(map(str, missing))} down and left out", err=True)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--collection", default="default", show_default=True, help="Collection to file the documents under.")
@click.option("--index", "backend", default=None, help="Vector index backend (default hnsw, or the store's current one).")
@click.option("--chunk-tokens", type=click.IntRange(16, 4096), default=None,
              help="Passage size in encoder tokens (default: the encoder's window, 256 with special tokens and title).")
@click.option("--overlap", type=click.IntRange(0, 1024), default=None, help="Tokens shared by consecutive passages (default 32).")
@click.option("--include", multiple=True, help="Only files matching this glob (repeatable), e.g. '*.md'.")
@click.option("--exclude", multiple=True, help="Skip files or folders matching this glob (repeatable).")
@click.option("--no-default-excludes", is_flag=True,
              help="Also walk hidden folders, _static, _sources, node_modules, Sphinx index pages.")
@click.option("--prune", is_flag=True, help="Drop stored documents whose files under PATHS are gone.")
@click.option("--text-field", default="text", show_default=True, help="JSON/JSONL: field holding the text.")
@click.option("--id-field", default=None, help="JSON/JSONL/CSV: field holding a record id (default: its position).")
@click.option("--title-field", default="title", show_default=True, help="JSON/JSONL/CSV: field holding the title.")
@click.option("--text-columns", default=None, help="CSV: comma-separated columns to index (default: all).")
@click.option("--max-size", default=50.0, show_default=True, type=click.FloatRange(0.001), help="Largest file to read, MB.")
@click.option("--stdin-name", default="stdin", show_default=True,
              help="Path recorded for '-' (stdin); its extension picks the format, e.g. notes.md.")
@click.option("--batch-passages", default=2048, show_default=True, type=click.IntRange(1),
              help="Passages gathered across files per encode call (bigger is faster, smaller commits sooner).")
@click.option("--no-progress", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--encoder-backend", default=None, type=click.Choice(["torch", "onnx", "onnx-int8"]),
              help="How the encoder runs (default onnx, or the store's recorded one); later commands follow the store.")
@click.option("--shards", default=None, type=click.IntRange(1, 4096),
              help="With --cluster, when the cluster library is first created: its number of shards (default 4).")
@click.option("--encoders", default=None, type=click.IntRange(1, 4096),
              help="With --cluster: encoder actors (default: one per CPU of the cluster).")
@cluster_option
@model_option
@data_option
def ingest(paths, collection, backend, chunk_tokens, overlap, include, exclude, no_default_excludes, prune,
           text_field, id_field, title_field, text_columns, max_size, stdin_name, batch_passages, no_progress,
           as_json, encoder_backend, shards, encoders, cluster, model, data):
    """Add files and folders (recursively; '-' reads stdin) to the store and index.

    Formats: .txt .md .html .pdf .json .jsonl .csv. Unchanged files are skipped, changed ones
    replaced. Bad files are reported with the reason; the exit status is 1 if any failed.
    """
    import json
    import sys

    from rag.ingest.loaders import LoadOptions
    from rag.ingest.pipeline import ingest_paths

    options = LoadOptions(text_field=text_field, id_field=id_field, title_field=title_field,
                          text_columns=[c.strip() for c in text_columns.split(",") if c.strip()] if text_columns else [])
    for name, value in (("--shards", shards), ("--encoders", encoders)):
        if value and not cluster:
            raise click.BadParameter(f"{name} needs --cluster", param_hint=name)
    with _library(data, model, backend, create=True, encoder_backend=encoder_backend, cluster=cluster,
                  shards=shards) as library:
        report = ingest_paths(library, list(paths), collection=collection, include=include, exclude=exclude,
                              chunk_tokens=chunk_tokens, overlap=overlap, prune=prune,
                              progress=not no_progress and sys.stderr.isatty(),
                              options=options, max_bytes=int(max_size * 1024 * 1024), stdin_name=stdin_name,
                              default_excludes=not no_default_excludes, encode_batch=batch_passages,
                              **({"encoders": encoders} if cluster else {}))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for path, reason in report.failures:
            click.echo(f"failed: {path}: {reason}", err=True)
        encoder_rate = report.passages / report.encode_seconds if report.encode_seconds else 0.0
        click.echo(f"{report.added} added, {report.updated} updated, {report.skipped} skipped, {report.failed} failed"
                   + (f", {report.removed} pruned" if prune else "")
                   + (f", {report.duplicates} duplicates stored once" if report.duplicates else ""))
        click.echo(f"{report.passages} passages in {report.seconds:.1f} s: {report.passages_per_second:.1f} passages/s "
                   f"(encoder {encoder_rate:.1f} passages/s)")
    if report.failed:
        raise SystemExit(1)


def _parse_where(values) -> dict[str, str]:
    from rag.contract import RequestError, parse_where

    try:
        return parse_where(list(values), "--where")
    except RequestError as exc:
        raise click.BadParameter(str(exc), param_hint="--where") from exc


@main.command()
@click.argument("query")
@click.option("-k", "k", default=SEARCH_K.default, show_default=True, type=click.IntRange(1, SEARCH_K.most),
              help="Number of passages.")
@click.option("--mode", default=DEFAULT_MODE, show_default=True, type=click.Choice(MODES),
              help="dense: embeddings; keyword: BM25; hybrid: reciprocal rank fusion of both (k=60).")
@click.option("--where", multiple=True, metavar="FIELD=VALUE",
              help="Filter before ranking: collection=NAME, path=GLOB, title=GLOB, id=N, or a metadata field (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print {query, mode, results: [...]} as JSON.")
@cluster_option
@partial_option
@model_option
@data_option
def search(query, k, mode, where, as_json, cluster, allow_partial, model, data):
    """Find the passages that best match QUERY."""
    import json
    import sys

    from rag.contract import search_json
    from rag.ingest.locations import location_label
    from rag.search.ranking import search as run_search
    from rag.search.snippets import snippet

    filters = _parse_where(where)
    with _library(data, model, cluster=cluster, allow_partial=allow_partial) as library:
        with _missing_shards(library) as missing:
            hits = run_search(library, query, k=k, mode=mode, where=filters)
    if as_json:
        click.echo(json.dumps(search_json(query.strip(), mode, hits, missing), indent=2, ensure_ascii=False))
        return
    _warn_partial(missing)
    if not hits:
        click.echo("no results")
        return
    color = sys.stdout.isatty()
    mark = (lambda w: click.style(w, bold=True, fg="yellow")) if color else (lambda w: f"**{w}**")
    for hit in hits:
        title = hit.document.title or hit.document.path
        click.echo(click.style(f"{hit.rank:>2}. [{hit.score:.3f}] {title}", bold=True) if color
                   else f"{hit.rank:>2}. [{hit.score:.3f}] {title}")
        where = location_label(hit.passage.page, hit.passage.last_page, hit.passage.heading)
        click.echo(f"    {hit.document.path}  (passage {hit.passage.id}, chars {hit.passage.start}-{hit.passage.end})"
                   + (f"  {where}" if where else ""))
        click.echo(f"    {snippet(hit.passage.text, query, mark=mark)}")
        click.echo()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@cluster_option
@data_option
def stats(as_json, cluster, data):
    """Documents, passages, collections, index backend, encoder and sizes."""
    import json

    with _library(data, cluster=cluster) as library:
        info = library.stats()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"data:        {info['data_dir']}")
    click.echo(f"documents:   {info['documents']}" + (f" ({info['duplicates']} duplicates)" if info["duplicates"] else ""))
    click.echo(f"passages:    {info['passages']}")
    click.echo(f"encoder:     {info['encoder'] or '-'}" + (f" ({info['dim']} dims)" if info["dim"] else "")
               + f", {info['encoder_backend']}")
    click.echo(f"index:       {info['backend']}")
    reader = info.get("reader") or {}
    if reader:
        given = (reader.get("scores") or {}).get("given_paragraph", {}).get("f1")
        click.echo(f"reader:      span, {reader.get('source')}: {reader.get('name', '-')}"
                   + (f" (validation F1 {given:.3f} given the paragraph)" if given is not None else "")
                   + (f"; {reader['message']}" if reader.get("message") else ""))
    retriever = info.get("retriever") or {}
    if retriever.get("query_adapter") or retriever.get("message"):
        after = ((retriever.get("scores") or {}).get("after") or {}).get("hybrid", {}).get("top5")
        click.echo(f"questions:   {'query adapter ' + repr(retriever['query_adapter']) if retriever.get('query_adapter') else 'plain encoder'}"
                   + (f" (validation gold passage in top 5: {after:.3f}, hybrid)" if after is not None else "")
                   + (f"; {retriever['message']}" if retriever.get("message") else ""))
    click.echo(f"sizes:       database {_megabytes(info['sizes']['database'])}, index {_megabytes(info['sizes']['index'])}")
    for name, c in info["collections"].items():
        click.echo(f"collection:  {name}: {c['documents']} documents, {c['passages']} passages")
    for shard in info.get("cluster", {}).get("per_shard", []):
        click.echo(f"shard {shard['shard']:>3}:   {shard['documents']} documents, {shard['passages']} passages"
                   f"  {shard['data_dir']}")


@main.command()
@click.option("--collection", default=None, help="Only this collection.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@cluster_option
@data_option
def docs(collection, as_json, cluster, data):
    """List stored documents: id, collection, passages, title, path."""
    import json

    from rag.contract import document_json

    with _library(data, cluster=cluster) as library:
        documents = library.documents(collection)
        counts = library.passage_counts()
    if as_json:
        click.echo(json.dumps([document_json(d, counts.get(d.id, 0)) for d in documents], indent=2,
                              ensure_ascii=False))
        return
    if not documents:
        click.echo("no documents")
        return
    click.echo(f"{'id':>6}  {'collection':<14} {'passages':>8}  title / path")
    for d in documents:
        click.echo(f"{d.id:>6}  {d.collection[:14]:<14} {counts.get(d.id, 0):>8}  {d.title[:60]}  {d.path}")


@main.command()
@click.argument("keys", nargs=-1, required=True)
@cluster_option
@data_option
def rm(keys, cluster, data):
    """Remove documents by id or path (a file's path removes all its records)."""
    import os
    from pathlib import Path

    from rag.contract import as_document_id
    from rag.errors import RagError

    failed = False
    with _library(data, cluster=cluster) as library:
        for key in keys:
            # an id (ASCII digits, up to 2^63 - 1), else the path as given, then as an absolute path
            candidates = [key] if as_document_id(key) is not None else [key, os.path.abspath(Path(key).expanduser())]
            error = None
            for candidate in candidates:
                try:
                    removed = library.remove_document(candidate)
                except RagError as exc:
                    error = exc
                    continue
                click.echo(f"removed {key} ({len(removed)} passages)")
                break
            else:
                click.echo(f"error: {error}", err=True)
                failed = True
    if failed:
        raise SystemExit(1)


@main.command()
@click.option("--index", "backend", default=None, help="Backend to rebuild with (default: the current one).")
@cluster_option
@data_option
def reindex(backend, cluster, data):
    """Rebuild the vector index from the stored embeddings (no re-encoding); --index switches backend."""
    import time

    with _library(data, cluster=cluster) as library:
        started = time.perf_counter()
        if cluster:  # every shard rebuilds its own index
            counts = library.rebuild_index(backend)
            vectors, where = sum(counts.values()), f" on {len(counts)} shards"
        else:
            vectors, where = len(library.rebuild_index(backend)), ""
        click.echo(f"{library.backend} index rebuilt{where}: {vectors} vectors in "
                   f"{time.perf_counter() - started:.1f} s")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; beyond loopback only when RAG_API_TOKEN is set.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 64), help="Worker threads.")
@click.option("--generator", default="local", show_default=True,
              help="Generator for Ask: local, openai or a model directory.")
@cluster_option
@partial_option
@data_option
def serve(host: str, port: int, threads: int, generator: str, cluster: str | None, allow_partial: bool,
          data: str | None) -> None:
    """Serve the search-and-answer page and the JSON API (waitress)."""
    from rag.errors import RagError
    from web.server import serve as run_server

    try:
        run_server(data, host=host, port=port, threads=threads, generator=generator, echo=click.echo,
                   cluster=cluster, allow_partial=allow_partial)
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.argument("question")
@click.option("-k", "k", default=ASK_K.default, show_default=True, type=click.IntRange(1, ASK_K.most),
              help="Passages given to the reader.")
@click.option("--mode", default=DEFAULT_MODE, show_default=True, type=click.Choice(MODES),
              help="How passages are retrieved.")
@click.option("--hyde", is_flag=True, help="Expand the query with hypothetical passages the generator writes (HyDE).")
@click.option("--reader", default=None, type=click.Choice(readers()),
              help="span: the trained span reader (the one `rag tune reader` made here, else the shipped one); "
                   "extract: the best phrase of the passages, no generator; prompt: the generator copies the "
                   "answer from the best sentences; fid: fusion-in-decoder over whole passages "
                   "(default: span, the reader that measures best, see docs/benchmarks.md).")
@click.option("--generator", default="local", show_default=True,
              help="local (Gemma 3 270M, converted once into DATA/models), openai (RAG_OPENAI_BASE_URL, "
                   "RAG_OPENAI_MODEL, RAG_OPENAI_API_KEY), or a Hugging Face model directory.")
@click.option("--where", multiple=True, metavar="FIELD=VALUE", help="Filter passages, as in `rag search` (repeatable).")
@click.option("--max-tokens", default=None, type=click.IntRange(1, 2048), help="Longest answer in tokens (default 16).")
@click.option("--json", "as_json", is_flag=True, help="Print {question, answer, citations, passages, hyde, timings}.")
@cluster_option
@partial_option
@model_option
@data_option
def ask(question, k, mode, hyde, reader, generator, where, max_tokens, as_json, cluster, allow_partial, model, data):
    """Answer QUESTION from your documents, citing the passages it used."""
    import json
    import sys

    from rag.answer.pipeline import ask as run_ask
    from rag.contract import answer_json
    from rag.ingest.locations import location_label
    from rag.search.snippets import snippet

    filters = _parse_where(where)
    live = not as_json and sys.stdout.isatty()
    streamed: list[str] = []

    def show(piece: str) -> None:
        if not streamed:
            click.echo(click.style("Answer: ", bold=True), nl=False)
        streamed.append(piece)
        click.echo(piece, nl=False)

    with _library(data, model, cluster=cluster, allow_partial=allow_partial) as library, \
            _missing_shards(library) as missing:
        from rag.answer.readers import DEFAULT_READER, NEEDS_GENERATOR

        if generator == "local" and not as_json and ((reader or DEFAULT_READER) in NEEDS_GENERATOR or hyde):
            from rag.models.generators import DEFAULT_MODEL_DIRNAME, model_cache_dir

            if not (model_cache_dir(library.data_dir) / DEFAULT_MODEL_DIRNAME / "config.json").exists():
                click.echo("Converting the packaged Gemma 3 270M model once (about 2 minutes)...", err=True)
        answer = run_ask(library, question, k=k, mode=mode, hyde=hyde, reader=reader, generator=generator,
                         where=filters, on_token=show if live else None, max_new_tokens=max_tokens)
    if as_json:
        body = answer_json(answer)
        if missing is not None:
            body.update(partial=bool(missing), missing_shards=list(missing))
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    _warn_partial(missing)
    if streamed:
        click.echo()
        if "".join(streamed).strip() not in answer.text:
            click.echo(f"(not supported by the passages) {answer.text}")
    else:
        click.echo(f"Answer: {answer.text}")
    if answer.sentence:
        sentence = answer.sentence
        marked = (sentence["text"][:sentence["answer_start"]]
                  + click.style(sentence["text"][sentence["answer_start"]:sentence["answer_end"]], bold=True,
                                underline=True) + sentence["text"][sentence["answer_end"]:])
        click.echo(f"In context [{sentence['n']}]: {' '.join(marked.split())}")
    if answer.hyde:
        click.echo("\nHyDE passages:")
        for i, passage in enumerate(answer.hyde, 1):
            click.echo(f"  {i}. {' '.join(passage.split())[:200]}")
    if answer.citations:
        click.echo("\nCitations:")
        for citation in answer.citations:
            hit = citation.hit
            where = location_label(hit.passage.page, hit.passage.last_page, hit.passage.heading)
            click.echo(f"  [{citation.n}] {hit.document.title or hit.document.path}" + (f", {where}" if where else "")
                       + f"  ({hit.document.path}, passage {hit.passage.id})")
            click.echo(f"      {snippet(hit.passage.text, answer.text + ' ' + question, width=200)}")
    t = answer.timings
    click.echo(f"\nTimings: retrieve {t['retrieve']:.2f} s, HyDE {t['hyde']:.2f} s, "
               f"generate {t['generate']:.2f} s, total {t['total']:.2f} s")


# --- tune: train the reader on your own question-answer pairs ------------------------------------

@main.group()
def tune() -> None:
    """Train the reader, or the question side of dense search, on your own question-answer pairs."""


def _run_tune(run, dataset, data, config, name, k, no_open, as_json) -> dict | None:
    """Run a `rag tune` training with its progress on stderr; with --json print its result and return None."""
    import json

    from rag.errors import RagError

    try:
        done = run(dataset, data, config, name=name, k=k, open_setting=not no_open,
                   progress=lambda message: click.echo(message, err=True), bar=not as_json)
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        manifest = {key: v for key, v in done["manifest"].items() if key != "losses"}
        click.echo(json.dumps({**done, "manifest": manifest}, indent=2))
        return None
    return done


@tune.command("reader")
@click.argument("dataset", type=click.Path(exists=True))
@click.option("--validation-share", default=0.2, show_default=True, type=click.FloatRange(0.0, 0.95),
              help="Share of the questions, in whole articles/documents, kept out of training to measure on.")
@click.option("--epochs", default=4, show_default=True, type=click.IntRange(1, 100))
@click.option("--learning-rate", default=6e-4, show_default=True, type=click.FloatRange(1e-7, 1.0))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024))
@click.option("--rank", default=32, show_default=True, type=click.IntRange(1, 256), help="LoRA rank.")
@click.option("--negatives", default=0.2, show_default=True, type=click.FloatRange(0.0, 5.0),
              help="Negative pairs (a question against another paragraph of its article) per question.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 50),
              help="Passages read per question in the open-setting validation.")
@click.option("--no-open", is_flag=True, help="Skip the open-setting validation (no store of the contexts is built).")
@click.option("--name", default=None, help="A name for the tuned reader (shown in `rag stats`).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (recipe, split, scores) as JSON.")
@data_option
def tune_reader(dataset, validation_share, epochs, learning_rate, batch_size, rank, negatives, seed, k, no_open,
                name, as_json, data):
    """Train the span reader on DATASET (SQuAD JSON, or JSONL of question/answers/context or passage_id).

    Whole articles (SQuAD) or documents (JSONL) are split into train and validation; a checkpoint is
    kept under DATA/tune/reader, so a stopped run resumes. The tuned reader goes into DATA/models and
    answers `rag ask`, the API and the page from then on.
    """
    from rag.tune.reader import TuneConfig, tune_reader as run_tune

    config = TuneConfig(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, rank=rank,
                        alpha=2 * rank, negatives=negatives, validation_share=validation_share, seed=seed)
    done = _run_tune(run_tune, dataset, data, config, name, k, no_open, as_json)
    if done is None:
        return
    manifest = done["manifest"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    scores = manifest["scores"]
    click.echo(f"\nReader {manifest['name']!r}: {len(manifest['train_groups'])} training and "
               f"{len(manifest['validation_groups'])} validation articles, {scores['training_seconds']:.0f} s")
    click.echo(f"{'validation':<18} {'questions':>9} {'EM':>6} {'F1':>6}")
    for label, key in (("given paragraph", "given_paragraph"), ("open (k=%d)" % k, "open")):
        if key in scores:
            row = scores[key]
            click.echo(f"{label:<18} {row.get('questions', 0):>9} {fmt(row.get('exact_match')):>6} "
                       f"{fmt(row.get('f1')):>6}")
    settings = manifest["settings"]
    click.echo(f"retrieval weight {settings['retrieval_weight']}, no-answer margin {settings['no_answer_margin']}")
    click.echo(f"installed in {done['reader']}; loss curve {done['loss_plot']}")


@tune.command("retriever")
@click.argument("dataset", type=click.Path(exists=True))
@click.option("--validation-share", default=0.2, show_default=True, type=click.FloatRange(0.0, 0.95),
              help="Share of the questions, in whole articles/documents, kept out of training to measure on.")
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(1, 100))
@click.option("--learning-rate", default=1e-4, show_default=True, type=click.FloatRange(1e-7, 1.0))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 1024))
@click.option("--rank", default=8, show_default=True, type=click.IntRange(1, 256), help="LoRA rank.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 50),
              help="Passages read per question in the open-setting validation.")
@click.option("--no-open", is_flag=True, help="Skip the reader's open-setting EM/F1 before and after.")
@click.option("--name", default=None, help="A name for the adapter (shown in `rag stats`).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (recipe, split, scores) as JSON.")
@data_option
def tune_retriever(dataset, validation_share, epochs, learning_rate, batch_size, rank, seed, k, no_open, name,
                   as_json, data):
    """Train a question-side adapter for dense search on DATASET (as for `tune reader`) over this store.

    A question's positives are the stored passages that hold its answer (within its context, or the
    passage it names); stored passage vectors stay as they are, nothing is re-encoded. The adapter is
    installed in DATA/models only when it ranks the validation questions' passages better.
    """
    from rag.tune.retriever import RetrieverConfig, tune_retriever as run_tune

    config = RetrieverConfig(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, rank=rank,
                             alpha=2 * rank, validation_share=validation_share, seed=seed)
    done = _run_tune(run_tune, dataset, data, config, name, k, no_open, as_json)
    if done is None:
        return
    manifest = done["manifest"]
    scores = manifest["scores"]
    click.echo(f"\nQuery adapter {manifest['name']!r}: {len(manifest['train_groups'])} training and "
               f"{len(manifest['validation_groups'])} validation groups, {scores['training_seconds']:.0f} s, "
               f"best epoch {scores['best_epoch']}")
    if "before" in scores:
        click.echo(f"{'validation':<10} {'search':<7} {'questions':>9} {'top-1':>6} {'top-5':>6} {'top-20':>6} "
                   f"{'MRR':>6} {'EM':>6} {'F1':>6}")
        for label in ("before", "after"):
            row = scores[label]
            for mode in ("dense", "hybrid"):
                r = row[mode]
                reader = row.get("open", {}) if mode == "hybrid" else {}
                em = f"{reader['exact_match']:.3f}" if reader else "-"
                f1 = f"{reader['f1']:.3f}" if reader else "-"
                click.echo(f"{label:<10} {mode:<7} {r['questions']:>9} {r['top1']:>6.3f} {r['top5']:>6.3f} "
                           f"{r['top20']:>6.3f} {r['mrr']:>6.3f} {em:>6} {f1:>6}")
    if done["installed"]:
        click.echo(f"installed in {done['adapter']}: questions are encoded through it from now on")
    else:
        click.echo(f"not installed: it did not rank the validation questions' passages better than the plain "
                   f"encoder in hybrid search (kept in {done['adapter']})")


def _register_eval() -> None:
    from eval.cli import eval_group

    main.add_command(eval_group)


_register_eval()


if __name__ == "__main__":
    main()
