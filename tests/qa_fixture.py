"""A hand-written QA fixture (made-up facts, so no model knows them): six one-paragraph articles, 25 questions."""
from __future__ import annotations

import json
from pathlib import Path

PARAGRAPHS = {
    "Quillport": "Quillport is the capital of Zorbania. It was founded in 1742 by the cartographer Ilsa Marrow. "
                 "The city is known for its blue salt mines, and about 80,000 people live there.",
    "Harbour": "The Quillport harbour was dredged in 1881. Its lighthouse, designed by Tomas Brandt, is painted "
               "red and white and its lamp can be seen from 30 kilometres away.",
    "Tea": "Green tea is made from the leaves of Camellia sinensis. It originated in China and was carried to "
           "Japan by Buddhist monks in the ninth century.",
    "Orchestra": "The Veltmoor orchestra was founded in 1902 by the conductor Anja Roos. It has 96 musicians "
                 "and plays in the Glass Hall, which seats 2,400 people.",
    "Glacier": "The Pallis glacier is 14 kilometres long. It has retreated by 900 metres since 1950 because "
               "summers in the valley have grown warmer.",
    "Railway": "The Northern Line railway opened in 1867. It joined Quillport to Edda, a journey of six hours, "
               "and was built by the engineer Maria Holt.",
}
QUESTIONS = [
    ("Quillport", "What is the capital of Zorbania?", "Quillport"),
    ("Quillport", "When was Quillport founded?", "1742"),
    ("Quillport", "Who founded Quillport?", "Ilsa Marrow"),
    ("Quillport", "What is Quillport known for?", "its blue salt mines"),
    ("Quillport", "How many people live in Quillport?", "about 80,000"),
    ("Harbour", "When was the Quillport harbour dredged?", "1881"),
    ("Harbour", "Who designed the lighthouse?", "Tomas Brandt"),
    ("Harbour", "What colours is the lighthouse painted?", "red and white"),
    ("Harbour", "From how far can the lamp be seen?", "30 kilometres"),
    ("Tea", "What is green tea made from?", "the leaves of Camellia sinensis"),
    ("Tea", "Where did green tea originate?", "China"),
    ("Tea", "Who carried tea to Japan?", "Buddhist monks"),
    ("Tea", "When did tea reach Japan?", "in the ninth century"),
    ("Orchestra", "When was the Veltmoor orchestra founded?", "1902"),
    ("Orchestra", "Who founded the Veltmoor orchestra?", "Anja Roos"),
    ("Orchestra", "How many musicians does the orchestra have?", "96"),
    ("Orchestra", "Where does the orchestra play?", "the Glass Hall"),
    ("Orchestra", "How many people does the Glass Hall seat?", "2,400"),
    ("Glacier", "How long is the Pallis glacier?", "14 kilometres"),
    ("Glacier", "How far has the glacier retreated since 1950?", "900 metres"),
    ("Glacier", "Why has the glacier retreated?", "summers in the valley have grown warmer"),
    ("Railway", "When did the Northern Line open?", "1867"),
    ("Railway", "Which towns did the railway join?", "Quillport to Edda"),
    ("Railway", "How long was the journey?", "six hours"),
    ("Railway", "Who built the Northern Line?", "Maria Holt"),
]

def write_fixture(path: Path) -> Path:
    """The QA pairs as SQuAD v1.1 JSON: one article per paragraph."""
    data = [{"title": title, "paragraphs": [{"context": text, "qas": [
        {"id": f"{title}-{n}", "question": q, "answers": [{"text": a, "answer_start": text.index(a)}]}
        for n, (t, q, a) in enumerate(QUESTIONS) if t == title]}]} for title, text in PARAGRAPHS.items()]
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return path
