"""The OpenAPI 3 description of the JSON API, served at /api/openapi.json; its modes, readers and
limits come from rag.contract, the same rules the API checks and the CLI offers."""
from __future__ import annotations

from rag.contract import (
    ASK_K, DEFAULT_MODE, DEFAULT_READER, LIST_LIMIT, MAX_ID, MAX_QUERY_CHARS, MODES, SEARCH_K, readers,
)


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(description: str, schema: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def openapi_document() -> dict:
    """The description, with the live lists of modes and readers and the limits on k."""
    modes = MODES
    k_schema = {"type": "integer", "minimum": 1, "maximum": SEARCH_K.most}
    query_schema = {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS}
    document_ref = {"type": "object", "required": ["id", "path", "title"], "properties": {
        "id": {"type": "integer"}, "path": {"type": "string"}, "title": {"type": "string"},
        "collection": {"type": "string"}}}
    document = {"type": "object", "required": ["id", "path", "title", "collection"], "properties": {
        **document_ref["properties"], "size": {"type": "integer"}, "mtime": {"type": "number", "nullable": True},
        "metadata": {"type": "object"}, "ingested_at": {"type": "string"}, "passages": {"type": "integer"}}}
    hit = {"type": "object", "required": ["rank", "score", "passage_id", "text", "document"], "properties": {
        "rank": {"type": "integer"}, "score": {"type": "number"}, "passage_id": {"type": "integer"},
        "text": {"type": "string"}, "document": {"$ref": "#/components/schemas/DocumentRef"},
        "matched_terms": {"type": "array", "items": {"type": "string"},
                          "description": "query words that occur in the passage"}}}
    location = {  # where a person finds the passage again; null when the format does not record it
        "page": {"type": "integer", "minimum": 1, "nullable": True,
                 "description": "PDF page (1-based) the passage starts on"},
        "last_page": {"type": "integer", "minimum": 1, "nullable": True,
                      "description": "PDF page the passage ends on"},
        "heading": {"type": "string", "nullable": True,
                    "description": "the heading (HTML h1-h3, Markdown #-###) the passage sits under"}}
    hit["properties"].update(location)
    write_security = [{"bearer": []}, {}]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "rag: search and ask your own documents",
            "version": "1",
            "description": (
                "Search passages (dense, keyword or hybrid) and ask questions answered with citations. "
                "Errors are JSON {\"error\": message} with a 4xx status. When RAG_API_TOKEN is set, "
                "upload and delete need 'Authorization: Bearer <token>'; without it the server only "
                "listens on loopback and refuses cross-origin browser writes."),
        },
        "paths": {
            "/healthz": {"get": {
                "summary": "Liveness check", "operationId": "health",
                "responses": {"200": _ok("the server is up", "Health")}}},
            "/api/stats": {"get": {
                "summary": "Library status: documents, passages, backend, encoder, generator",
                "operationId": "stats",
                "responses": {"200": _ok("the status", "Stats")}}},
            "/api/search": {"get": {
                "summary": "Rank passages for a query", "operationId": "search",
                "parameters": [
                    {"name": "q", "in": "query", "required": True, "schema": query_schema},
                    {"name": "k", "in": "query", "schema": dict(k_schema, default=SEARCH_K.default)},
                    {"name": "mode", "in": "query", "schema": {"type": "string", "enum": list(modes),
                                                               "default": DEFAULT_MODE}},
                    {"name": "where", "in": "query", "style": "form", "explode": True,
                     "description": "FIELD=VALUE filter applied before top-k: collection=NAME, path=GLOB, "
                                    "title=GLOB, id=N or a metadata field; repeat for several",
                     "schema": {"type": "array", "items": {"type": "string"}}},
                ],
                "responses": {"200": _ok("ranked passages, as `rag search --json`", "SearchResult"),
                              "400": _error("empty query, bad k, unknown mode or bad filter")}}},
            "/api/ask": {"post": {
                "summary": "Answer a question from the library, with citations",
                "operationId": "ask",
                "description": ("With `Accept: text/event-stream` the answer streams as server-sent events: "
                                "`status` {message}, `token` {text}, then `answer` (the Answer object) "
                                "or `error` {error, status}."),
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/AskRequest"}}}},
                "responses": {"200": {"description": "the answer, as `rag ask --json`",
                                      "content": {
                                          "application/json": {"schema": {"$ref": "#/components/schemas/Answer"}},
                                          "text/event-stream": {"schema": {"type": "string"}}}},
                              "400": _error("empty question, bad k, unknown mode or reader"),
                              "415": _error("the body is not JSON"),
                              "503": _error("the generator model cannot be loaded")}}},
            "/api/documents": {
                "get": {
                    "summary": "List documents", "operationId": "listDocuments",
                    "parameters": [
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": LIST_LIMIT.most,
                                    "default": LIST_LIMIT.default}},
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                        {"name": "collection", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": _ok("a page of documents", "DocumentList")}},
                "post": {
                    "summary": "Upload and ingest files (same ingestion as `rag ingest`)",
                    "operationId": "uploadDocuments", "security": write_security,
                    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                        "type": "object", "required": ["file"], "properties": {
                            "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            "collection": {"type": "string", "default": "default"}}}}}},
                    "responses": {"200": _ok("per-file results (added, updated, skipped, failed and why)",
                                             "UploadResult"),
                                  "400": _error("no file in the field 'file' or a bad collection name"),
                                  "401": _error("missing or wrong bearer token"),
                                  "403": _error("cross-origin or CSRF check failed"),
                                  "413": _error("the upload is larger than the limit"),
                                  "422": _error("no file could be ingested (the body also has the per-file results)")}},
            },
            "/api/documents/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}],
                "get": {
                    "summary": "A document's text and its passages' character offsets",
                    "operationId": "getDocument",
                    "responses": {"200": _ok("the document", "DocumentText"), "404": _error("no such document")}},
                "delete": {
                    "summary": "Remove a document from the store and the index",
                    "operationId": "deleteDocument", "security": write_security,
                    "responses": {"200": _ok("the removed document", "Deleted"),
                                  "401": _error("missing or wrong bearer token"),
                                  "403": _error("cross-origin or CSRF check failed"),
                                  "404": _error("no such document")}},
            },
            "/api/openapi.json": {"get": {
                "summary": "This description", "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI 3 document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "the value of RAG_API_TOKEN"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Health": {"type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}},
                "DocumentRef": document_ref,
                "Document": document,
                "Hit": hit,
                "SearchResult": {"type": "object", "required": ["query", "mode", "results"], "properties": {
                    "query": {"type": "string"}, "mode": {"type": "string"},
                    "results": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
                    "partial": {"type": "boolean",
                                "description": "cluster library only: true when a shard was down and left out"},
                    "missing_shards": {"type": "array", "items": {"type": "integer"}}}},
                "AskRequest": {"type": "object", "required": ["question"], "properties": {
                    "question": query_schema,
                    "k": dict(k_schema, maximum=ASK_K.most, default=ASK_K.default),
                    "mode": {"type": "string", "enum": list(modes), "default": DEFAULT_MODE},
                    "hyde": {"type": "boolean", "default": False},
                    "reader": {"type": "string", "enum": list(readers()), "default": DEFAULT_READER},
                    "where": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                                        {"type": "object", "additionalProperties": {"type": "string"}}]},
                    "stream": {"type": "boolean", "description": "same as Accept: text/event-stream"}}},
                "Citation": {"type": "object", "required": ["n", "passage_id", "document", "page", "last_page",
                                                            "heading"], "properties": {
                    "n": {"type": "integer"}, "passage_id": {"type": "integer"},
                    "document": {"$ref": "#/components/schemas/DocumentRef"}, **location}},
                "Answer": {"type": "object", "required": ["question", "answer", "citations", "passages"],
                           "properties": {
                               "question": {"type": "string"}, "answer": {"type": "string"},
                               "sentence": {"type": "object", "nullable": True, "description":
                                            "the cited passage's sentence holding the answer; answer_start and "
                                            "answer_end are the answer's offsets in its text", "properties": {
                                                "text": {"type": "string"}, "answer_start": {"type": "integer"},
                                                "answer_end": {"type": "integer"},
                                                "passage_start": {"type": "integer"}, "n": {"type": "integer"},
                                                "passage_id": {"type": "integer"}}},
                               "citations": {"type": "array", "items": {"$ref": "#/components/schemas/Citation"}},
                               "passages": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
                               "hyde": {"type": "array", "items": {"type": "string"}},
                               "timings": {"type": "object", "additionalProperties": {"type": "number"}}}},
                "Stats": {"type": "object", "required": ["documents", "passages", "backend", "encoder", "generator"],
                          "properties": {
                              "documents": {"type": "integer"}, "passages": {"type": "integer"},
                              "backend": {"type": "string"}, "encoder": {"type": "string"},
                              "encoder_backend": {"type": "string", "enum": ["torch", "onnx", "onnx-int8"]},
                              "collections": {"type": "object"},
                              "reader": {"type": "object", "description": "the span reader that answers: "
                                         "shipped, or tuned on this library with `rag tune reader`", "properties": {
                                  "name": {"type": "string"},
                                  "source": {"type": "string", "enum": ["shipped", "tuned", "missing"]},
                                  "scores": {"type": "object"}}},
                              "generator": {"type": "object", "properties": {
                                  "name": {"type": "string"},
                                  "state": {"type": "string", "enum": ["lazy", "loading", "loaded", "missing"]},
                                  "message": {"type": "string"}}},
                              "message": {"type": "string", "description": "what to do when something is missing"}}},
                "DocumentList": {"type": "object", "properties": {
                    "total": {"type": "integer"}, "offset": {"type": "integer"},
                    "documents": {"type": "array", "items": {"$ref": "#/components/schemas/Document"}}}},
                "DocumentText": {"type": "object", "required": ["document", "text", "passages"], "properties": {
                    "document": {"$ref": "#/components/schemas/Document"},
                    "text": {"type": "string"},
                    "page_starts": {"type": "array", "items": {"type": "integer"},
                                    "description": "PDF: character offset into text where page n starts, "
                                                   "at index n - 1 (empty for other formats)"},
                    "passages": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "integer"}, "order": {"type": "integer"},
                        "start": {"type": "integer", "description": "character offset into text"},
                        "end": {"type": "integer"}, **location}}}}},
                "UploadResult": {"type": "object", "required": ["files"], "properties": {
                    "added": {"type": "integer"}, "updated": {"type": "integer"},
                    "skipped": {"type": "integer"}, "failed": {"type": "integer"},
                    "files": {"type": "array", "items": {"type": "object", "properties": {
                        "file": {"type": "string"}, "saved_as": {"type": "string"},
                        "status": {"type": "string", "enum": ["added", "updated", "skipped", "failed"]},
                        "reason": {"type": "string"}, "passages": {"type": "integer"},
                        "document": {"$ref": "#/components/schemas/DocumentRef"}}}}}},
                "Deleted": {"type": "object", "properties": {"deleted": {"$ref": "#/components/schemas/DocumentRef"}}},
            },
        },
    }
