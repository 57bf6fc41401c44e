"""One request contract: the CLI and the web API accept the same requests and return the same shapes,
and numbers out of range are clear 4xx errors, never a 500 or a traceback."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rag.cli import main
from rag.contract import ASK_K, MAX_ID, SEARCH_K, RequestError, parse_document_id, parse_where
from web import create_app

NOTES = {
    "lighthouse.txt": "The Skerryvore lighthouse\n\nThe Skerryvore lighthouse stands on a reef off the west "
                      "coast of Scotland. It was designed by Alan Stevenson and completed in 1844.\n",
    "glacier.txt": "Glacier notes\n\nThe Aletsch glacier is the largest glacier in the Alps, about 23 km long.\n",
    "sourdough.txt": "Sourdough starter\n\nA sourdough starter is fed with equal weights of flour and water.\n",
}


@pytest.fixture(scope="module")
def data_dir(notes_data_dir):
    return notes_data_dir("contract", NOTES)


@pytest.fixture(scope="module")
def client(data_dir, encoder):
    return create_app({"DATA_DIR": str(data_dir), "ENCODER_OBJECT": encoder, "API_TOKEN": None}).test_client()


def cli_json(data_dir, *args):
    result = CliRunner().invoke(main, [*args, "--json", "--data", str(data_dir)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_search_json_is_the_same_from_the_cli_and_the_api(data_dir, client, mode):
    cli = cli_json(data_dir, "search", "largest glacier in the Alps", "-k", "3", "--mode", mode,
                   "--where", "collection=default")
    api = client.get("/api/search", query_string={"q": "largest glacier in the Alps", "k": 3, "mode": mode,
                                                  "where": "collection=default"}).get_json()
    assert cli == api
    assert cli["results"][0]["document"]["title"] == "Glacier notes"
    assert {"matched_terms", "passage_id", "score", "rank", "text"} <= set(cli["results"][0])


def test_documents_json_is_the_same_from_the_cli_and_the_api(data_dir, client):
    cli = cli_json(data_dir, "docs")
    api = client.get("/api/documents").get_json()
    assert api["documents"] == cli and len(cli) == 3
    one = client.get(f"/api/documents/{cli[0]['id']}").get_json()
    assert one["document"] == cli[0]


def test_one_filter_rule_everywhere(data_dir, client):
    assert parse_where(["title=Glacier notes", " collection =default"]) == {"title": "Glacier notes",
                                                                            "collection": "default"}
    assert parse_where({"path": "*.txt "}) == {"path": "*.txt "}  # the value is kept as given
    with pytest.raises(RequestError, match="FIELD=VALUE"):
        parse_where(["collection"])
    # a value with a trailing space matches nothing, in both front ends alike
    cli = cli_json(data_dir, "search", "glacier", "--where", "collection=default ")
    api = client.get("/api/search", query_string={"q": "glacier", "where": "collection=default "}).get_json()
    assert cli == api and cli["results"] == []


def test_k_bounds_are_the_contract_everywhere(data_dir, client):
    spec = client.get("/api/openapi.json").get_json()
    search_k = next(p for p in spec["paths"]["/api/search"]["get"]["parameters"] if p["name"] == "k")
    assert search_k["schema"]["maximum"] == SEARCH_K.most
    assert spec["components"]["schemas"]["AskRequest"]["properties"]["k"]["maximum"] == ASK_K.most
    too_many = CliRunner().invoke(main, ["search", "glacier", "-k", str(SEARCH_K.most + 1), "--data", str(data_dir)])
    assert too_many.exit_code == 2 and f"1<=x<={SEARCH_K.most}" in too_many.output
    response = client.get("/api/search", query_string={"q": "glacier", "k": SEARCH_K.most + 1})
    assert response.status_code == 400 and str(SEARCH_K.most) in response.get_json()["error"]


@pytest.mark.parametrize("k", ["Infinity", "1e400", "-1", "1.5", "１", "99999999999999999999999"])
def test_k_out_of_range_in_a_query_string_is_400(client, k):
    response = client.get("/api/search", query_string={"q": "glacier", "k": k})
    assert response.status_code == 400 and "'k' must be a whole number" in response.get_json()["error"]


@pytest.mark.parametrize("raw_k", ["1e400", "-1e400", "Infinity", "NaN", "1.5", "true", "\"5x\"", "1e2"])
def test_k_out_of_range_in_a_json_body_is_400(client, raw_k):
    body = '{"question": "How long is the glacier?", "k": ' + raw_k + "}"
    response = client.post("/api/ask", data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "'k' must be a whole number" in response.get_json()["error"]


def test_json_nested_100000_deep_is_400(client):
    body = '{"question": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post("/api/ask", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "nested too deeply" in response.get_json()["error"]


@pytest.mark.parametrize("raw", [str(2**63), str(2**64), "9" * 40, "１", "١", "0", "-1", "1.0"])
def test_document_ids_out_of_range_are_404_not_500(client, raw):
    for method in (client.get, client.delete):
        response = method(f"/api/documents/{raw}")
        assert response.status_code == 404, (method, raw, response.get_data(as_text=True))
        assert "error" in response.get_json()
    assert client.get(f"/documents/{raw}").status_code == 404  # the HTML page too


def test_document_id_rule():
    assert parse_document_id("42") == 42 and parse_document_id(MAX_ID) == MAX_ID
    for bad in ("１", "١٢", str(MAX_ID + 1), "0", "", " 1", True):
        with pytest.raises(RequestError):
            parse_document_id(bad)


@pytest.mark.parametrize("key", [str(2**64), "9" * 40, "１"])
def test_rm_with_an_id_out_of_range_says_so(data_dir, key):
    result = CliRunner().invoke(main, ["rm", key, "--data", str(data_dir)])
    assert result.exit_code == 1
    assert "no document with path or id" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
